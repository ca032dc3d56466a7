#!/usr/bin/env python3
"""A Python client of moe.v1.Inference, with stubs generated from proto/ by grpcio-tools.

    tools/install-deps.sh     # makes .venv with grpcio-tools
    .venv/bin/python3 tools/python/moe_client.py --server localhost:50051 --prompt "Hello" --max-tokens 16
    .venv/bin/python3 tools/python/moe_client.py --server localhost:50051 --prompt-ids 1,2,3

With --prompt or --chat, prints the text as it streams in (the server's tokenizer encodes and decodes it);
with --prompt-ids, the new token ids at the end. Errors print the gRPC status code and message.
"""
import argparse
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_stubs():
    """Generates the Python stubs of inference.proto into a temporary folder and imports them."""
    out = tempfile.mkdtemp(prefix="moe_stubs_")
    proto_dir = os.path.join(ROOT, "proto")
    rc = protoc.main(["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(proto_dir, "moe/v1/inference.proto")])
    if rc != 0:
        sys.exit("cannot generate stubs from proto/moe/v1/inference.proto")
    sys.path.insert(0, out)
    from moe.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
    return inference_pb2, inference_pb2_grpc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="localhost:50051")
    prompt = ap.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-ids", help="comma-separated token ids")
    prompt.add_argument("--chat", help="a user message, sent as a conversation (the server applies the chat template)")
    ap.add_argument("--system", help="with --chat: a system message before the user's")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--tls-ca", help="PEM CA that signed the server's certificate: use TLS")
    ap.add_argument("--tls-cert", help="PEM client certificate, for a server that wants mTLS")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    ap.add_argument("--api-key", default=os.environ.get("MOE_API_KEY"),
                    help="sent as 'authorization: Bearer KEY' (default: $MOE_API_KEY)")
    args = ap.parse_args()

    pb, pb_grpc = load_stubs()
    sampling = pb.SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    if args.seed is not None:
        sampling.seed = args.seed
    request = pb.GenerateRequest(max_tokens=args.max_tokens, sampling=sampling, ignore_eos=args.ignore_eos)
    text_out = args.prompt is not None or args.chat is not None
    if args.prompt is not None:
        request.prompt = args.prompt
    elif args.chat is not None:
        if args.system:
            request.messages.add(role="system", content=args.system)
        request.messages.add(role="user", content=args.chat)
    else:
        request.prompt_ids.extend(int(x) for x in args.prompt_ids.split(","))
    if args.tls_ca or args.tls_cert:
        read = lambda path: open(path, "rb").read() if path else None  # noqa: E731
        credentials = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
        channel = grpc.secure_channel(args.server, credentials)
    else:
        channel = grpc.insecure_channel(args.server)
    stub = pb_grpc.InferenceStub(channel)
    tokens = []
    try:
        metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else None
        for response in stub.Generate(request, metadata=metadata):
            tokens.extend(response.token_ids)
            if text_out:
                print(response.text, end="", flush=True)
            if response.finish_reason:
                print(f"finish_reason={pb.FinishReason.Name(response.finish_reason)} "
                      f"completion_tokens={response.usage.completion_tokens}", file=sys.stderr)
    except grpc.RpcError as e:
        print(f"moe_client.py: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print() if text_out else print(" ".join(str(t) for t in tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
