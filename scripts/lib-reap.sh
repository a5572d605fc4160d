# Sourced by the test and demo scripts. At exit, find processes that still hold this script's
# stdout or stderr (a server a test forgot to stop, a daemon an install started) and stop them,
# so nothing outlives the run holding a terminal or a CI pipe open. Only processes that share our
# own output pipe are touched; their names are printed so the leak gets fixed where it started.
reap_leftovers() {
  local ours ancestors pid fd target leaked=()
  ours=$(readlink /proc/$$/fd/1 2>/dev/null || true)
  [ -n "$ours" ] || return 0
  ancestors=" $$ "
  pid=$$
  while [ "$pid" -gt 1 ] 2>/dev/null; do
    pid=$(awk '/^PPid:/ {print $2}' /proc/"$pid"/status 2>/dev/null || echo 1)
    ancestors+="$pid "
  done
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    case "$ancestors" in *" $pid "*) continue ;; esac
    for fd in 1 2; do
      target=$(readlink "$dir/fd/$fd" 2>/dev/null || true)
      if [ "$target" = "$ours" ]; then
        # Our own children in this shell pipeline (e.g. tee) are fine; everything else is a leak.
        leaked+=("$pid")
        break
      fi
    done
  done
  [ ${#leaked[@]} -gt 0 ] || return 0
  for pid in "${leaked[@]}"; do
    echo "warning: process $pid ($(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | cut -c1-120)) outlived its test; stopping it" >&2
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 1
  for pid in "${leaked[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
