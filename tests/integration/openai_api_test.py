#!/usr/bin/env python3
"""The OpenAI-compatible HTTP API as its users reach it: the official `openai` client (and curl
for the raw SSE framing) against a real moe-coordinator and mpirun-launched moe-worker ranks on
loopback. Expected text comes from elsewhere: moe-generate (the engine alone, itself checked
against HF transformers) produces the reference token ids for the prompt that HF `tokenizers`
encodes, and `tokenizers` decodes them; chat prompts are rendered with Jinja2 configured as
transformers' apply_chat_template configures it.

Usage: openai_api_test.py BUILD_DIR WORK_DIR
"""
import array
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jinja2.sandbox
import openai
import tokenizers

BUILD, WORK = sys.argv[1], sys.argv[2]
KEY = "sk-test-0123"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, path, body=None, key=KEY, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{HTTP}{path}", data=data, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
MODEL = os.path.join(WORK, "tiny-dsv3")
subprocess.run([f"{BUILD}/tools/moe-make-model", "--preset", "tiny-dsv3", "--dtype", "f32",
                "--seed", "5", "--out", MODEL], check=True, capture_output=True)
tok = tokenizers.Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
GRPC, CLUSTER, HTTP, METRICS = free_port(), free_port(), free_port(), free_port()
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
coordinator = subprocess.Popen(
    [f"{BUILD}/coordinator/moe-coordinator", "--model", MODEL, "--world-size", "2",
     "--listen", f"127.0.0.1:{GRPC}", "--cluster-listen", f"127.0.0.1:{CLUSTER}",
     "--http-listen", f"127.0.0.1:{HTTP}",
     "--metrics-port", str(METRICS), "--api-key", KEY, "--max-running", "4", "--max-queue", "12",
     "--max-request-bytes", "65536"],
    stdout=open(os.path.join(WORK, "coordinator.log"), "w"), stderr=subprocess.STDOUT)
workers = None


def reference(prompt, max_tokens):
    """Greedy ids from the engine alone for `prompt` (HF tokenizers' ids), and their text."""
    ids = tok.encode(prompt).ids
    out = subprocess.run([f"{BUILD}/tools/moe-generate", "--model", MODEL, "--threads", "1",
                          "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", str(max_tokens)],
                         check=True, capture_output=True, text=True).stdout
    new = [int(x) for x in re.findall(r"-?\d+", out.strip().splitlines()[-1])]
    return ids, new, tok.decode(new, skip_special_tokens=True)


def logprobs_reference(ids, max_tokens, top):
    """Greedy tokens of the engine alone and, from its logits (moe-generate --logits-out), each
    position's log-softmax: the token's and the `top` most likely (ties: lower id)."""
    path = os.path.join(WORK, "logits.npy")
    out = subprocess.run([f"{BUILD}/tools/moe-generate", "--model", MODEL, "--threads", "1",
                          "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", str(max_tokens),
                          "--logits-out", path], check=True, capture_output=True, text=True).stdout
    new = [int(x) for x in re.findall(r"-?\d+", out.strip().splitlines()[-1])]
    data = open(path, "rb").read()
    header_len = struct.unpack("<H", data[8:10])[0]
    shape = [int(x) for x in re.search(r"\(([^)]*)\)", data[10:10 + header_len].decode()).group(1).split(",") if x.strip()]
    values = array.array("f")
    values.frombytes(data[10 + header_len:])
    result = []
    for k, token in enumerate(new):
        row = values[k * shape[1]:(k + 1) * shape[1]]
        m = max(row)
        lse = m + math.log(sum(math.exp(x - m) for x in row))
        best = sorted(range(len(row)), key=lambda v: (-row[v], v))[:top]
        result.append((token, row[token] - lse, [(v, row[v] - lse) for v in best]))
    return result


def render_chat(messages, **kwargs):
    """The prompt transformers' apply_chat_template(add_generation_prompt=True) renders."""
    config = json.load(open(os.path.join(MODEL, "tokenizer_config.json")))
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols"])
    token = lambda t: t["content"] if isinstance(t, dict) else t  # noqa: E731
    return env.from_string(config["chat_template"]).render(
        messages=messages, tools=None, documents=None, add_generation_prompt=True,
        bos_token=token(config["bos_token"]), eos_token=token(config["eos_token"]), **kwargs)


def chat_reference(messages, max_tokens, **kwargs):
    ids = tok.encode(render_chat(messages, **kwargs), add_special_tokens=False).ids
    out = subprocess.run([f"{BUILD}/tools/moe-generate", "--model", MODEL, "--threads", "1",
                          "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", str(max_tokens)],
                         check=True, capture_output=True, text=True).stdout
    new = [int(x) for x in re.findall(r"-?\d+", out.strip().splitlines()[-1])]
    return ids, new, tok.decode(new, skip_special_tokens=True)


def metric(series):
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return None


try:
    # Before the workers: 503 on /health and on requests.
    for _ in range(100):
        try:
            status, body = http("GET", "/health", key=None)
            break
        except OSError:
            time.sleep(0.1)
    check(status == 503 and "waiting for workers" in body, f"/health before workers: {status} {body}")
    status, body = http("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    check(status == 503, f"completion before workers: {status} {body}")

    workers = subprocess.Popen(
        ["mpirun", "-np", "2", f"{BUILD}/worker/moe-worker", "--coordinator", f"127.0.0.1:{CLUSTER}",
         "--model", MODEL, "--heartbeat-ms", "300"],
        stdout=open(os.path.join(WORK, "workers.log"), "w"), stderr=subprocess.STDOUT, env=env)
    for _ in range(600):
        if http("GET", "/health", key=None)[0] == 200:
            break
        time.sleep(0.1)
    check(http("GET", "/health", key=None)[0] == 200, "/health never turned 200")

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{HTTP}/v1", api_key=KEY, max_retries=0)
    models = client.models.list()
    check([m.id for m in models.data] == ["tiny-dsv3"], f"models: {models}")

    prompts = ["Hello, world!", "你好，世界。The capital of France is", "def f(x):\n    return",
               "🚀 emoji and\ttabs"]
    refs = {p: reference(p, 20) for p in prompts}

    # Non-streaming.
    for p in prompts:
        ids, new, text = refs[p]
        r = client.completions.create(model="tiny-dsv3", prompt=p, max_tokens=20, temperature=0,
                                      extra_body={"ignore_eos": True})
        check(r.choices[0].text == text, f"completion text for {p!r}: {r.choices[0].text!r} != {text!r}")
        check(r.choices[0].finish_reason == "length", f"finish_reason {r.choices[0].finish_reason}")
        check(r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 20, f"usage {r.usage}")
    # A token-id prompt.
    ids, new, text = refs[prompts[0]]
    r = client.completions.create(model="tiny-dsv3", prompt=ids, max_tokens=20, temperature=0,
                                  extra_body={"ignore_eos": True})
    check(r.choices[0].text == text, "token-id prompt")

    # Streaming, with usage in the last chunk.
    for p in prompts:
        ids, new, text = refs[p]
        chunks = list(client.completions.create(model="tiny-dsv3", prompt=p, max_tokens=20,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        streamed = "".join(c.choices[0].text for c in chunks if c.choices)
        check(streamed == text, f"streamed text for {p!r}: {streamed!r} != {text!r}")
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        check(finals == ["length"], f"stream finish reasons {finals}")
        check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20,
              f"usage chunk {chunks[-1]}")

    # Raw SSE framing.
    raw = subprocess.run(["curl", "-sN", "-H", f"Authorization: Bearer {KEY}",
                          f"http://127.0.0.1:{HTTP}/v1/completions", "-d",
                          json.dumps({"prompt": prompts[0], "max_tokens": 5, "temperature": 0,
                                      "stream": True, "ignore_eos": True})],
                         capture_output=True, text=True).stdout
    events = raw.split("\n\n")
    check(events[-1] == "" and events[-2] == "data: [DONE]", f"SSE ends with [DONE]: {raw[-80:]!r}")
    check(all(e.startswith("data: {") for e in events[:-2]), f"SSE events: {raw[:200]!r}")

    # Stop strings, matched across tokens: stop at a piece of the reference text spanning the
    # boundary between two of its tokens.
    ids, new, text = refs[prompts[1]]
    pieces = [tok.decode([t]) for t in new]
    k = next(i for i in range(2, len(pieces)) if len(pieces[i - 1]) >= 1 and len(pieces[i]) >= 1 and
             "\ufffd" not in pieces[i - 1] + pieces[i])
    stop = pieces[k - 1][-1:] + pieces[k][:1]
    want = text[:text.index(stop)]
    for stream in (False, True):
        r = client.completions.create(model="tiny-dsv3", prompt=prompts[1], max_tokens=20,
                                      temperature=0, stop=[stop, "never-appears"], stream=stream,
                                      extra_body={"ignore_eos": True})
        got = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
        check(got == want, f"stop {stop!r} (stream={stream}): {got!r} != {want!r}")

    # n choices, seeded: reproducible, and different from each other.
    a = client.completions.create(model="tiny-dsv3", prompt=prompts[0], max_tokens=12, n=2,
                                  temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    b = client.completions.create(model="tiny-dsv3", prompt=prompts[0], max_tokens=12, n=2,
                                  temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    check([c.text for c in a.choices] == [c.text for c in b.choices], "seeded n=2 is reproducible")
    check(len(a.choices) == 2 and a.choices[0].text != a.choices[1].text, "n=2 choices differ")
    check(a.usage.prompt_tokens == len(refs[prompts[0]][0]), f"n=2 counts the prompt once: {a.usage}")

    # Many concurrent streams.
    results = {}

    def stream_one(i):
        p = prompts[i % len(prompts)]
        s = client.completions.create(model="tiny-dsv3", prompt=p, max_tokens=20, temperature=0,
                                      stream=True, extra_body={"ignore_eos": True})
        results[i] = "".join(c.choices[0].text for c in s if c.choices)

    threads = [threading.Thread(target=stream_one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(all(results.get(i) == refs[prompts[i % len(prompts)]][2] for i in range(16)),
          "16 concurrent streams equal their references")

    # Chat completions: the conversation rendered with the checkpoint's template, then generated.
    conversations = [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "你好，世界"},
         {"role": "assistant", "content": "<think>hm</think>Hi."}, {"role": "user", "content": "🚀 again"}]]
    for messages in conversations:
        ids, new, text = chat_reference(messages, 16)
        r = client.chat.completions.create(model="tiny-dsv3", messages=messages, max_tokens=16,
                                           temperature=0, extra_body={"ignore_eos": True})
        check(r.object == "chat.completion" and r.id.startswith("chatcmpl-"), f"chat envelope {r}")
        check(r.choices[0].message.role == "assistant" and r.choices[0].message.content == text,
              f"chat answer {r.choices[0].message!r} != {text!r}")
        check(r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 16, f"chat usage {r.usage}")
        chunks = list(client.chat.completions.create(model="tiny-dsv3", messages=messages, max_tokens=16,
                                                     temperature=0, stream=True,
                                                     stream_options={"include_usage": True},
                                                     extra_body={"ignore_eos": True}))
        check(all(c.object == "chat.completion.chunk" for c in chunks), "chat chunk objects")
        check(chunks[0].choices[0].delta.role == "assistant", f"first chat chunk has the role: {chunks[0]}")
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        check(streamed == text, f"streamed chat {streamed!r} != {text!r}")
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        check(finals == ["length"], f"chat stream finish reasons {finals}")
        check(chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(ids), f"chat usage chunk {chunks[-1]}")
    # chat_template_kwargs reach the template: DeepSeek-V3.1's thinking mode opens <think>.
    thinking = [{"role": "user", "content": "Think."}]
    ids, new, text = chat_reference(thinking, 8, thinking=True)
    check(ids != tok.encode(render_chat(thinking), add_special_tokens=False).ids, "thinking changes the prompt")
    status, body = http("POST", "/v1/chat/completions", {"messages": thinking, "max_tokens": 8, "temperature": 0,
                                                        "ignore_eos": True, "chat_template_kwargs": {"thinking": True}})
    check(status == 200 and json.loads(body)["choices"][0]["message"]["content"] == text, f"thinking chat: {body}")
    # Without max_tokens a chat may use the rest of the context; stop at EOS or a stop token.
    r = client.chat.completions.create(model="tiny-dsv3", messages=thinking, temperature=0,
                                       extra_body={"stop_token_ids": [chat_reference(thinking, 3)[1][2]]})
    check(r.choices[0].finish_reason == "stop" and r.usage.completion_tokens <= 3, f"chat without max_tokens: {r.usage}")

    # Log-probabilities, against the engine's own logits; token strings as HF tokenizers decodes them.
    ids = tok.encode(prompts[0]).ids
    want = logprobs_reference(ids, 8, 2)
    near = lambda a, b: abs(a - b) < 1e-4  # noqa: E731
    for stream in (False, True):
        r = client.completions.create(model="tiny-dsv3", prompt=prompts[0], max_tokens=8, temperature=0,
                                      logprobs=2, stream=stream, extra_body={"ignore_eos": True})
        parts = list(r) if stream else [r]
        tokens = [t for p in parts if p.choices and p.choices[0].logprobs for t in p.choices[0].logprobs.tokens]
        values = [v for p in parts if p.choices and p.choices[0].logprobs for v in p.choices[0].logprobs.token_logprobs]
        tops = [d for p in parts if p.choices and p.choices[0].logprobs for d in p.choices[0].logprobs.top_logprobs]
        offsets = [o for p in parts if p.choices and p.choices[0].logprobs for o in p.choices[0].logprobs.text_offset]
        check(tokens == [tok.decode([t]) for t, _, _ in want], f"logprobs tokens (stream={stream}): {tokens}")
        check(len(values) == 8 and all(near(v, lp) for v, (_, lp, _) in zip(values, want)),
              f"token_logprobs (stream={stream}): {values} vs {[lp for _, lp, _ in want]}")
        # The legacy form is a dict by token text: tokens that spell the same (partial characters
        # all read "\ufffd") share a key, so only the ones spelled uniquely are compared.
        def unique(best, chosen):
            spelled = [tok.decode([v]) for v, _ in best] + [tok.decode([chosen])]
            return [(tok.decode([v]), lp) for v, lp in best if spelled.count(tok.decode([v])) == 1]
        check(all(len(d) >= len(unique(best, t)) and all(near(d[k], lp) for k, lp in unique(best, t))
                  for d, (t, _, best) in zip(tops, want)) and len(tops) == 8,
              f"top_logprobs (stream={stream}): {tops}")
        check(offsets == [sum(len(x) for x in tokens[:k]) for k in range(len(tokens))], f"text_offset {offsets}")
    r = client.completions.create(model="tiny-dsv3", prompt=prompts[0], max_tokens=4, temperature=0)
    check(r.choices[0].logprobs is None, "no logprobs unless asked")
    chat_msgs = [{"role": "user", "content": "Hello!"}]
    chat_ids = tok.encode(render_chat(chat_msgs), add_special_tokens=False).ids
    want = logprobs_reference(chat_ids, 6, 3)
    r = client.chat.completions.create(model="tiny-dsv3", messages=chat_msgs, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    check([c.token for c in content] == [tok.decode([t]) for t, _, _ in want], f"chat logprob tokens {content}")
    check(all(near(c.logprob, lp) for c, (_, lp, _) in zip(content, want)), "chat logprobs")
    check(all([t.token for t in c.top_logprobs] == [tok.decode([v]) for v, _ in best] and
              all(near(t.logprob, lp) for t, (_, lp) in zip(c.top_logprobs, best)) for c, (_, _, best) in zip(content, want)),
          "chat top_logprobs")
    check(all(bytes(c.bytes).decode("utf-8", "replace") == c.token for c in content), "chat logprob bytes")

    # A client that goes away mid-stream: its request is cancelled, its KV blocks freed.
    cancelled_before = metric('moe_requests_total{outcome="cancelled"}') or 0
    s = client.completions.create(model="tiny-dsv3", prompt=prompts[2], max_tokens=400,
                                  temperature=0, stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(s):
        if i == 2:
            break
    s.response.close()
    for _ in range(100):
        if (metric('moe_requests_total{outcome="cancelled"}') or 0) > cancelled_before and \
                metric("moe_kv_blocks_used") == 0:
            break
        time.sleep(0.1)
    check(metric("moe_kv_blocks_used") == 0, "KV blocks freed after a disconnect")
    check((metric('moe_requests_total{outcome="cancelled"}') or 0) > cancelled_before,
          "the disconnected request counted as cancelled")

    # Bad requests, in OpenAI's error form with the right status.
    def error_of(call):
        try:
            call()
        except openai.APIStatusError as e:
            return e.status_code, str(e)
        return None, ""

    for name, call, status, text in [
            ("unknown model", lambda: client.completions.create(model="gpt-9", prompt="x"), 404, "gpt-9"),
            ("max_tokens 0", lambda: client.completions.create(model="tiny-dsv3", prompt="x", max_tokens=0), 400, "max_tokens"),
            ("logprobs over 20", lambda: client.completions.create(model="tiny-dsv3", prompt="x", logprobs=21), 400, "logprobs"),
            ("temperature", lambda: client.completions.create(model="tiny-dsv3", prompt="x", temperature=-1), 400, "temperature"),
            ("too long", lambda: client.completions.create(model="tiny-dsv3", prompt="x", max_tokens=100000), 400, "max_tokens"),
            ("no messages", lambda: client.chat.completions.create(model="tiny-dsv3", messages=[]), 400, "messages"),
            ("message without role", lambda: client.chat.completions.create(model="tiny-dsv3", messages=[{"content": "hi"}]), 400, "role"),
            # DeepSeek-V3.1's template concatenates content with strings: a list of parts fails in it.
            ("template fails", lambda: client.chat.completions.create(model="tiny-dsv3", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]), 400, "concatenate"),
            ("bad key", lambda: openai.OpenAI(base_url=f"http://127.0.0.1:{HTTP}/v1", api_key="wrong", max_retries=0).completions.create(model="tiny-dsv3", prompt="x"), 401, "not valid")]:
        got, message = error_of(call)
        check(got == status and text in message, f"{name}: {got} {message}")
    status, body = http("POST", "/v1/completions", {"prompt": "x"}, key=None)
    check(status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", f"no key: {status} {body}")
    status, body = http("POST", "/v1/completions", raw=b"{not json")
    check(status == 400 and "error" in json.loads(body), f"not JSON: {status} {body}")
    status, body = http("POST", "/v1/completions", raw=json.dumps({"prompt": "x" * 70000}).encode())
    check(status == 413 and "error" in json.loads(body), f"body too large: {status} {body[:200]}")
    # A burst past --max-running 4 and --max-queue 12: some 429.
    codes = []

    def burst():
        codes.append(http("POST", "/v1/completions", {"prompt": "x", "max_tokens": 300, "ignore_eos": True})[0])

    threads = [threading.Thread(target=burst) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(codes.count(429) > 0 and codes.count(200) > 0 and codes.count(200) + codes.count(429) == 30,
          f"burst: {sorted(codes)}")

    # /tokenize and /detokenize, against the tokenizers library.
    status, body = http("POST", "/tokenize", {"prompt": prompts[1]})
    check(status == 200 and json.loads(body)["tokens"] == tok.encode(prompts[1]).ids, f"/tokenize {body}")
    status, body = http("POST", "/detokenize", {"tokens": refs[prompts[1]][1]})
    check(status == 200 and json.loads(body)["prompt"] == tok.decode(refs[prompts[1]][1], skip_special_tokens=False),
          f"/detokenize {body}")
    status, body = http("POST", "/detokenize", {"tokens": [1, 99999]})
    check(status == 400, f"/detokenize of a bad id: {status}")
finally:
    coordinator.terminate()
    try:
        coordinator.wait(timeout=30)
    except subprocess.TimeoutExpired:
        coordinator.kill()
    if workers is not None:
        try:
            workers.wait(timeout=30)
        except subprocess.TimeoutExpired:
            workers.kill()

if failures:
    print(f"openai_api_test: {len(failures)} check(s) failed; logs in {WORK}")
    print(open(os.path.join(WORK, "coordinator.log")).read()[-3000:])
    sys.exit(1)
print("openai_api_test: every check passed")
