# Step timing for the project's scripts (sourced): `step "what"` closes the previous step, prints
# the new one with the clock time, and `steps_summary` prints every step's duration.
_step_names=()
_step_secs=()
_step_start=""

_step_close() {
  if [[ -n $_step_start ]]; then
    _step_secs+=($((SECONDS - _step_start)))
    echo "--- ${_step_names[-1]}: $((SECONDS - _step_start)) s"
  fi
}

step() {
  _step_close
  _step_names+=("$*")
  _step_start=$SECONDS
  echo
  echo "=== $* ($(date +%H:%M:%S))"
}

steps_summary() {
  _step_close
  _step_start=""
  echo
  echo "=== time per step (total $SECONDS s)"
  local i
  for i in "${!_step_secs[@]}"; do printf '%6d s  %s\n' "${_step_secs[$i]}" "${_step_names[$i]}"; done
}
