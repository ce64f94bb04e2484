#!/usr/bin/env bash
# Block until the host bootstrap has finished, then exit 0 on success and 1 on failure.
# Terraform runs this through Cloud Assistant (alicloud_ecs_command + alicloud_ecs_invocation): it
# is the Terraform counterpart of the ROS WaitCondition. It only reads the status file the
# bootstrap writes, and on failure prints the tail of the bootstrap log (which holds no secret).
#
#   bash -e wait-ready.sh [TIMEOUT_SECONDS]
set -Eeuo pipefail

timeout=${1:-${MUSICGEN_WAIT_TIMEOUT:-5400}}
state_dir=${MUSICGEN_STATE_DIR:-/var/lib/musicgen}
log_file=${MUSICGEN_LOG_FILE:-/var/log/musicgen/bootstrap.log}
interval=${MUSICGEN_WAIT_INTERVAL:-15}
status_file=$state_dir/bootstrap.status

[[ $timeout =~ ^[0-9]+$ ]] || { echo "usage: wait-ready.sh [TIMEOUT_SECONDS]" >&2; exit 2; }
deadline=$((SECONDS + timeout))
while :; do
  status=""
  if [[ -r $status_file ]]; then status=$(<"$status_file"); fi
  case $status in
    SUCCESS*)
      echo "musicgen: ready (${status#SUCCESS })"
      exit 0
      ;;
    FAILURE*)
      echo "musicgen: bootstrap failed (${status#FAILURE })" >&2
      if [[ -r $log_file ]]; then tail -n 40 "$log_file" >&2; fi
      exit 1
      ;;
  esac
  if ((SECONDS >= deadline)); then
    echo "musicgen: not ready after ${timeout}s (status: ${status:-none yet})" >&2
    if [[ -r $log_file ]]; then tail -n 40 "$log_file" >&2; fi
    exit 1
  fi
  sleep "$interval"
done
