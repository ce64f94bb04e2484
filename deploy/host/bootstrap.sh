#!/usr/bin/env bash
# MusicGen GPU host bootstrap: from a fresh Ubuntu 22.04/24.04 ECS instance (gn6i = T4, gn7i = A10)
# to Triton + the page serving, as a systemd service, with a report to the cloud template.
#
#   bash -e bootstrap.sh [--env-file FILE] [--log-file FILE] [--dry-run] [--only STEP[,STEP]]
#
# Idempotent: every step probes first and changes only what is missing or different, so running
# it again (after a reboot, a failure, or a parameter change) is safe.
# --dry-run prints the plan (PLAN / SKIP lines) without changing anything on this machine: the
# probes (is the driver loaded? is docker there?) are read-only.
#
# Settings come from an env file (KEY=VALUE lines, parsed, never sourced or evaluated) written by
# the cloud template (ROS RunCommand or Terraform cloud-init). See deploy/README.md for the keys.
# Secrets (the page password, the wait-condition URL) live in root-only files, are read with
# xtrace off, and are never printed, logged or passed on a command line.
set -Eeuo pipefail
umask 022

readonly STEPS_ALL="preflight cloud_init packages driver docker nvidia_ctk source secrets page_auth api_tokens compose_env images export service readiness finish"
readonly DRIVER_PACKAGE_FMT="nvidia-headless-%s-server nvidia-utils-%s-server"
readonly BASE_PACKAGES="ca-certificates curl git gnupg apache2-utils python3"
readonly PAGE_AUTH_NAME="page-auth.caddy"
readonly DEPLOY_TOKEN_NAME="deploy"

DRY_RUN=0
ONLY=""
ENV_FILE=""
LOG_FILE=""
STEP="init"
FINISHED=0
REBOOTING=0
CHANGED_SERVICE=0

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
  printf 'ERROR [%s] %s\n' "$STEP" "$*" >&2
  exit 1
}

log() {
  printf '%s [%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$STEP" "$*"
}

plan() { printf 'PLAN %s: %s\n' "$STEP" "$*"; }
skip() { printf 'SKIP %s: %s\n' "$STEP" "$*"; }

# Quote a command for display (never used with secrets).
show() {
  local out="" a
  for a in "$@"; do out+="$(printf '%q' "$a") "; done
  printf '%s' "${out% }"
}

# Run a mutating command, or print it in a dry run. Never pass a secret as an argument.
run() {
  if ((DRY_RUN)); then
    plan "run: $(show "$@")"
    return 0
  fi
  log "run: $(show "$@")"
  "$@"
}

# Write stdin to PATH with MODE when the content differs; returns 0 if written (or would be).
# No temporary file in a dry run; the new file is created private, then chmod-ed and renamed.
put_file() {
  local mode=$1 path=$2 content tmp
  content=$(cat)
  if [[ -f $path && $(<"$path") == "$content" ]]; then
    skip "$path is up to date"
    return 1
  fi
  if ((DRY_RUN)); then
    plan "write $path (mode $mode, ${#content} characters)"
    return 0
  fi
  mkdir -p "$(dirname "$path")"
  tmp="$path.tmp.$$"
  (umask 077 && printf '%s\n' "$content" >"$tmp")
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
  log "wrote $path"
  return 0
}

# xtrace must be off while a secret is in a variable: `bash -x bootstrap.sh` must not leak it.
XTRACE_WAS=0
secret_begin() {
  XTRACE_WAS=0
  if [[ $- == *x* ]]; then XTRACE_WAS=1; fi
  set +x
}
secret_end() {
  if ((XTRACE_WAS)); then set -x; fi
  return 0
}

# --- settings -----------------------------------------------------------------------------------

# KEY=VALUE parser: only known keys, optional surrounding quotes, no evaluation of any kind.
load_env_file() {
  local file=$1 line key value
  [[ -r $file ]] || die "cannot read env file $file"
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%$'\r'}
    [[ -z $line || $line == \#* ]] && continue
    [[ $line == *=* ]] || die "env file $file: not KEY=VALUE: ${line%%=*}"
    key=${line%%=*}
    value=${line#*=}
    if [[ $value == \"*\" || $value == \'*\' ]]; then
      value=${value:1:${#value}-2}
    fi
    [[ $key =~ ^[A-Z][A-Z0-9_]*$ ]] || die "env file $file: bad key"
    case $key in
      MUSICGEN_* | HF_ENDPOINT) printf -v "$key" '%s' "$value" ;;
      *) die "env file $file: unknown key $key" ;;
    esac
  done <"$file"
}

set_defaults() {
  : "${MUSICGEN_CHECKPOINT:=facebook/musicgen-small}"
  : "${MUSICGEN_PRECISION:=fp16}"
  : "${MUSICGEN_SOURCE_REPO:=}"
  : "${MUSICGEN_SOURCE_REF:=main}"
  : "${MUSICGEN_ROOT:=/opt/musicgen}"
  : "${MUSICGEN_SOURCE_DIR:=$MUSICGEN_ROOT/src}"
  : "${MUSICGEN_ETC_DIR:=/etc/musicgen}"
  : "${MUSICGEN_STATE_DIR:=/var/lib/musicgen}"
  : "${MUSICGEN_SYSTEMD_DIR:=/etc/systemd/system}"
  : "${MUSICGEN_OS_RELEASE:=/etc/os-release}"
  : "${MUSICGEN_SYSFS_PCI:=/sys/bus/pci/devices}"
  : "${MUSICGEN_DOCKER_DAEMON_JSON:=/etc/docker/daemon.json}"
  : "${MUSICGEN_PAGE_PORT:=80}"
  : "${MUSICGEN_PAGE_USER:=musicgen}"
  : "${MUSICGEN_PAGE_PASSWORD_FILE:=$MUSICGEN_ETC_DIR/page-password}"
  : "${MUSICGEN_NOTIFY_FILE:=$MUSICGEN_ETC_DIR/ros-notify}"
  : "${MUSICGEN_PUBLIC_URL:=}"
  : "${MUSICGEN_HTTPS_PORT:=443}"
  : "${MUSICGEN_SITE_HOST:=}"
  : "${MUSICGEN_TLS_MODE:=internal}"
  : "${MUSICGEN_API_TOKENS_FILE:=$MUSICGEN_ETC_DIR/api-tokens}"
  : "${MUSICGEN_API_TOKEN_FILE:=$MUSICGEN_ETC_DIR/api-token}"
  : "${MUSICGEN_TOKEN_TOOL:=$MUSICGEN_SOURCE_DIR/deploy/auth/token_auth.py}"
  : "${MUSICGEN_OOS_REGION:=}"
  : "${MUSICGEN_SECRET_PAGE_PASSWORD:=}"
  : "${MUSICGEN_SECRET_API_TOKEN:=}"
  : "${MUSICGEN_IMAGE_PREFIX:=}"
  : "${MUSICGEN_IMAGE_TAG:=}"
  : "${MUSICGEN_NVIDIA_DRIVER_BRANCHES:=570 535}"
  : "${MUSICGEN_NVIDIA_CTK_REPO:=https://nvidia.github.io/libnvidia-container}"
  : "${MUSICGEN_REQUIRE_GPU:=1}"
  : "${MUSICGEN_MIN_FREE_GB:=40}"
  : "${MUSICGEN_READY_TIMEOUT:=1800}"
  : "${MUSICGEN_ALLOW_NON_ROOT:=0}"
  : "${HF_ENDPOINT:=}"
}

validate_settings() {
  local hub='^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$'
  [[ $MUSICGEN_CHECKPOINT =~ $hub ]] ||
    die "MUSICGEN_CHECKPOINT must be a hub id (owner/name) or a preset name"
  [[ $MUSICGEN_PRECISION == fp16 || $MUSICGEN_PRECISION == fp32 ]] ||
    die "MUSICGEN_PRECISION must be fp16 or fp32"
  if ! [[ $MUSICGEN_PAGE_PORT =~ ^[0-9]{1,5}$ ]] || ((MUSICGEN_PAGE_PORT < 1 || MUSICGEN_PAGE_PORT > 65535)); then
    die "MUSICGEN_PAGE_PORT must be a TCP port"
  fi
  [[ $MUSICGEN_PAGE_USER =~ ^[a-z][a-z0-9_-]{0,31}$ ]] || die "MUSICGEN_PAGE_USER must match [a-z][a-z0-9_-]*"
  [[ -z $MUSICGEN_SOURCE_REPO || $MUSICGEN_SOURCE_REPO =~ ^(https://|file://|/)[A-Za-z0-9._~:/@%+=-]+$ ]] ||
    die "MUSICGEN_SOURCE_REPO must be an https:// (or local) git URL"
  [[ $MUSICGEN_SOURCE_REF =~ ^[A-Za-z0-9._/-]{1,128}$ ]] || die "MUSICGEN_SOURCE_REF must be a branch, tag or commit"
  [[ -z $MUSICGEN_IMAGE_PREFIX || $MUSICGEN_IMAGE_PREFIX =~ ^[a-z0-9.:/_-]+$ ]] ||
    die "MUSICGEN_IMAGE_PREFIX must be a registry/namespace"
  [[ -z $MUSICGEN_IMAGE_TAG || $MUSICGEN_IMAGE_TAG =~ ^[A-Za-z0-9_.-]{1,128}$ ]] || die "MUSICGEN_IMAGE_TAG is not a docker tag"
  [[ -z $MUSICGEN_PUBLIC_URL || $MUSICGEN_PUBLIC_URL =~ ^https?://[A-Za-z0-9.:/_-]+$ ]] || die "MUSICGEN_PUBLIC_URL must be an http(s) URL"
  if ! [[ $MUSICGEN_HTTPS_PORT =~ ^[0-9]{1,5}$ ]] || ((MUSICGEN_HTTPS_PORT < 1 || MUSICGEN_HTTPS_PORT > 65535)); then
    die "MUSICGEN_HTTPS_PORT must be a TCP port"
  fi
  [[ -z $MUSICGEN_SITE_HOST || $MUSICGEN_SITE_HOST =~ ^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$ ]] ||
    die "MUSICGEN_SITE_HOST must be a domain name or an IPv4 address"
  [[ $MUSICGEN_TLS_MODE == internal || $MUSICGEN_TLS_MODE == acme ]] || die "MUSICGEN_TLS_MODE must be internal or acme"
  [[ -z $MUSICGEN_OOS_REGION || $MUSICGEN_OOS_REGION =~ ^[a-z]{2}-[a-z0-9-]+$ ]] || die "MUSICGEN_OOS_REGION must be a region id"
  local s
  for s in "$MUSICGEN_SECRET_PAGE_PASSWORD" "$MUSICGEN_SECRET_API_TOKEN"; do
    [[ -z $s || $s =~ ^[A-Za-z0-9_./-]{1,180}$ ]] || die "MUSICGEN_SECRET_* must be OOS parameter names"
    [[ -z $s || -n $MUSICGEN_OOS_REGION ]] || die "MUSICGEN_SECRET_* need MUSICGEN_OOS_REGION"
  done
  [[ -z $HF_ENDPOINT || $HF_ENDPOINT =~ ^https://[A-Za-z0-9.:/_-]+$ ]] || die "HF_ENDPOINT must be an https URL"
  [[ $MUSICGEN_NVIDIA_DRIVER_BRANCHES =~ ^[0-9]{3}( [0-9]{3})*$ ]] || die "MUSICGEN_NVIDIA_DRIVER_BRANCHES: e.g. '570 535'"
  [[ $MUSICGEN_READY_TIMEOUT =~ ^[0-9]+$ ]] || die "MUSICGEN_READY_TIMEOUT must be seconds"
  [[ $MUSICGEN_MIN_FREE_GB =~ ^[0-9]+$ ]] || die "MUSICGEN_MIN_FREE_GB must be a number"
}

# --- status and the cloud's wait condition ------------------------------------------------------

write_status() {
  ((DRY_RUN)) && return 0
  mkdir -p "$MUSICGEN_STATE_DIR"
  printf '%s\n' "$1" >"$MUSICGEN_STATE_DIR/bootstrap.status"
}

# Signal the ROS WaitCondition (the notify file holds the handle's CurlCli: a signed URL, so a
# secret). Nothing here is printed; curl's own output is discarded.
notify_cloud() {
  local status=$1 reason=$2 data=${3:-} cli payload
  if ((DRY_RUN)); then
    if [[ -s $MUSICGEN_NOTIFY_FILE ]]; then plan "signal the cloud wait condition: $status"; else skip "no wait-condition handle file ($MUSICGEN_NOTIFY_FILE)"; fi
    return 0
  fi
  [[ -s $MUSICGEN_NOTIFY_FILE ]] || return 0
  reason=${reason//[\"\\]/ }
  data=${data//[\"\\]/ }
  # shellcheck disable=SC2034  # payload is used inside the eval below
  payload=$(printf '{"status": "%s", "reason": "%s", "data": "%s", "id": "musicgen-bootstrap"}' "$status" "$reason" "$data")
  secret_begin
  cli=$(<"$MUSICGEN_NOTIFY_FILE")
  [[ $cli == curl\ * ]] || { secret_end; log "wait-condition handle file does not hold a curl command: not signalled"; return 0; }
  if eval "$cli -sS -o /dev/null --retry 5 --retry-delay 3 --max-time 30 -d \"\$payload\"" >/dev/null 2>&1; then
    secret_end
    log "signalled the cloud wait condition: $status"
  else
    secret_end
    log "could not signal the cloud wait condition ($status)"
  fi
}

on_exit() {
  local rc=$?
  set +e
  if ((rc != 0 && !FINISHED && !REBOOTING)); then
    if ((DRY_RUN)); then
      printf 'DRY RUN FAILED at step %s (exit %s)\n' "$STEP" "$rc" >&2
    else
      log "FAILED at step $STEP (exit $rc); log: ${LOG_FILE:-stdout}"
      write_status "FAILURE step=$STEP"
      notify_cloud FAILURE "musicgen bootstrap failed at step $STEP; see ${LOG_FILE:-the journal of musicgen-bootstrap.service} on the host"
    fi
  fi
}

# --- probes (read-only) -------------------------------------------------------------------------

have() { command -v "$1" >/dev/null 2>&1; }

pkg_installed() {
  have dpkg-query || return 1
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

pkg_available() {
  have apt-cache || return 1
  apt-cache show "$1" >/dev/null 2>&1
}

gpu_present() {
  local v
  for v in "$MUSICGEN_SYSFS_PCI"/*/vendor; do
    [[ -r $v && $(<"$v") == 0x10de ]] && return 0
  done
  return 1
}

driver_ok() { have nvidia-smi && nvidia-smi -L >/dev/null 2>&1; }

docker_ok() { have docker && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

compose_ok() { have docker && docker compose version >/dev/null 2>&1; }

nvidia_runtime_configured() { [[ -r $MUSICGEN_DOCKER_DAEMON_JSON ]] && grep -q '"nvidia"' "$MUSICGEN_DOCKER_DAEMON_JSON"; }

image_present() { have docker && docker image inspect "$1" >/dev/null 2>&1; }

source_commit() { git -C "$MUSICGEN_SOURCE_DIR" rev-parse HEAD 2>/dev/null; }

compose() {
  docker compose --project-name musicgen --project-directory "$MUSICGEN_SOURCE_DIR/deploy" \
    --file "$MUSICGEN_SOURCE_DIR/deploy/compose.yaml" --env-file "$MUSICGEN_ETC_DIR/compose.env" "$@"
}

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends "$@"
}

APT_UPDATED=0
apt_update() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update
}

# apt-get update at most once per run (the plan shows it once too).
apt_refresh() {
  ((APT_UPDATED)) && return 0
  APT_UPDATED=1
  run apt_update
}

# --- steps --------------------------------------------------------------------------------------

step_preflight() {
  local id="" version="" free_kb
  if ((!DRY_RUN && EUID != 0 && MUSICGEN_ALLOW_NON_ROOT != 1)); then die "run as root"; fi
  if [[ -r $MUSICGEN_OS_RELEASE ]]; then
    id=$(sed -n 's/^ID=//p' "$MUSICGEN_OS_RELEASE" | tr -d '"')
    version=$(sed -n 's/^VERSION_ID=//p' "$MUSICGEN_OS_RELEASE" | tr -d '"')
  fi
  case "$id $version" in
    "ubuntu 22.04" | "ubuntu 24.04") log "OS: $id $version" ;;
    *) die "unsupported OS '${id:-unknown} ${version:-}': this bootstrap supports Ubuntu 22.04 and 24.04" ;;
  esac
  if gpu_present; then
    log "NVIDIA GPU found on the PCI bus"
  elif ((MUSICGEN_REQUIRE_GPU)); then
    die "no NVIDIA GPU on the PCI bus: use an ecs.gn6i (T4) or ecs.gn7i (A10) instance type"
  else
    log "no NVIDIA GPU (MUSICGEN_REQUIRE_GPU=0): continuing"
  fi
  free_kb=$(df -Pk / | awk 'NR==2 {print $4}')
  if ((free_kb < MUSICGEN_MIN_FREE_GB * 1024 * 1024)); then
    die "only $((free_kb / 1024 / 1024)) GB free on /: the images and the exported weights need ${MUSICGEN_MIN_FREE_GB} GB (use a 100 GB system disk)"
  fi
  [[ -n $MUSICGEN_SOURCE_REPO || -d $MUSICGEN_SOURCE_DIR/.git ]] ||
    die "no source: set MUSICGEN_SOURCE_REPO or provide a checkout in $MUSICGEN_SOURCE_DIR"
}

step_cloud_init() {
  if have cloud-init; then
    run cloud-init status --wait
  else
    skip "cloud-init is not installed"
  fi
}

step_packages() {
  local p missing=()
  for p in $BASE_PACKAGES; do pkg_installed "$p" || missing+=("$p"); done
  if ((${#missing[@]} == 0)); then
    skip "base packages present"
    return 0
  fi
  apt_refresh
  run apt_install "${missing[@]}"
}

step_driver() {
  local b pkgs="" count=0 marker="$MUSICGEN_STATE_DIR/driver-reboots"
  if driver_ok; then
    skip "NVIDIA driver loaded ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n1))"
    return 0
  fi
  # R570 (>= 560) runs the CUDA 12.6 of tritonserver 24.10 natively; R535 works through the
  # image's forward-compatibility libraries on data-center GPUs (T4, A10). First available wins.
  for b in $MUSICGEN_NVIDIA_DRIVER_BRANCHES; do
    if pkg_available "nvidia-headless-$b-server"; then
      # shellcheck disable=SC2059
      pkgs=$(printf "$DRIVER_PACKAGE_FMT" "$b" "$b")
      break
    fi
  done
  if [[ -z $pkgs ]]; then
    if ((DRY_RUN)); then
      b=${MUSICGEN_NVIDIA_DRIVER_BRANCHES%% *}
      # shellcheck disable=SC2059
      pkgs=$(printf "$DRIVER_PACKAGE_FMT" "$b" "$b")
      plan "no apt index here to choose from; on the host the first available of branches: $MUSICGEN_NVIDIA_DRIVER_BRANCHES"
    else
      die "none of the NVIDIA driver branches '$MUSICGEN_NVIDIA_DRIVER_BRANCHES' is available from apt"
    fi
  fi
  apt_refresh
  # DKMS builds the kernel module against the running kernel's headers.
  # shellcheck disable=SC2086
  run apt_install "linux-headers-$(uname -r)" $pkgs
  run modprobe nvidia
  if ((DRY_RUN)); then
    plan "reboot once (and resume through musicgen-bootstrap.service) if nvidia-smi still fails"
    return 0
  fi
  if driver_ok; then
    log "NVIDIA driver loaded without a reboot"
    return 0
  fi
  [[ -r $marker ]] && count=$(<"$marker")
  if ((count >= 1)); then die "the NVIDIA driver does not load even after a reboot (see dmesg)"; fi
  mkdir -p "$MUSICGEN_STATE_DIR"
  echo $((count + 1)) >"$marker"
  log "rebooting to load the NVIDIA driver; musicgen-bootstrap.service resumes after boot"
  REBOOTING=1
  systemctl reboot
  exit 0
}

step_docker() {
  local want=()
  have docker || want+=(docker.io)
  compose_ok || want+=(docker-compose-v2)
  if ((${#want[@]})); then
    apt_refresh
    run apt_install "${want[@]}"
  fi
  if docker_ok; then
    skip "docker engine running with compose ($(docker compose version --short 2>/dev/null || echo '?'))"
  else
    run systemctl enable --now docker
  fi
}

add_nvidia_ctk_repo() {
  local repo=$1 keyring=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
  curl -fsSL "$repo/gpgkey" | gpg --batch --yes --dearmor -o "$keyring"
  curl -fsSL "$repo/stable/deb/nvidia-container-toolkit.list" |
    sed "s#deb https://#deb [signed-by=$keyring] https://#g" >/etc/apt/sources.list.d/nvidia-container-toolkit.list
}

step_nvidia_ctk() {
  if have nvidia-ctk; then
    skip "nvidia-container-toolkit present"
  else
    run add_nvidia_ctk_repo "$MUSICGEN_NVIDIA_CTK_REPO"
    run apt_update # the new repository's index
    run apt_install nvidia-container-toolkit
  fi
  if nvidia_runtime_configured; then
    skip "docker already has the nvidia runtime"
  else
    run nvidia-ctk runtime configure --runtime=docker
    run systemctl restart docker
  fi
}

step_source() {
  local dir=$MUSICGEN_SOURCE_DIR
  if [[ -d $dir/.git ]]; then
    if [[ -z $MUSICGEN_SOURCE_REPO ]]; then
      skip "using the checkout in $dir as it is ($(source_commit || echo '?'))"
    else
      run git -C "$dir" fetch --depth 1 origin "$MUSICGEN_SOURCE_REF"
      run git -C "$dir" checkout --force --detach FETCH_HEAD
    fi
  else
    run mkdir -p "$(dirname "$dir")"
    run git clone --depth 1 --branch "$MUSICGEN_SOURCE_REF" "$MUSICGEN_SOURCE_REPO" "$dir"
  fi
  SOURCE_COMMIT=$(source_commit || echo "unknown")
  [[ -n $MUSICGEN_IMAGE_TAG ]] || MUSICGEN_IMAGE_TAG=${SOURCE_COMMIT:0:12}
  [[ $MUSICGEN_IMAGE_TAG != unknown ]] || MUSICGEN_IMAGE_TAG=local
  log "source commit $SOURCE_COMMIT, image tag $MUSICGEN_IMAGE_TAG"
}

# Secrets come from OOS encrypted parameters (never through the command content or the user data):
# the instance RAM role may read exactly these. Each is fetched into a root-only file once, unless
# what it becomes (the page's bcrypt hash, the token's SHA-256) is already in place.
page_password_applied() { [[ -s $MUSICGEN_ETC_DIR/$PAGE_AUTH_NAME ]]; }
api_token_applied() { grep -q "^$DEPLOY_TOKEN_NAME " "$MUSICGEN_API_TOKENS_FILE" 2>/dev/null; }

fetch_secret() {
  local name=$1 out=$2 applied=$3
  if [[ -z $name ]]; then
    skip "no OOS secret parameter set for $out"
  elif [[ -s $out ]]; then
    skip "$out present"
  elif "$applied"; then
    skip "secret $name already applied"
  else
    run python3 "$MUSICGEN_SOURCE_DIR/deploy/host/oos_secret.py" --region "$MUSICGEN_OOS_REGION" --name "$name" --out "$out"
  fi
}

step_secrets() {
  fetch_secret "$MUSICGEN_SECRET_PAGE_PASSWORD" "$MUSICGEN_PAGE_PASSWORD_FILE" page_password_applied
  fetch_secret "$MUSICGEN_SECRET_API_TOKEN" "$MUSICGEN_API_TOKEN_FILE" api_token_applied
}

# The API tokens file (SHA-256 hashes, root-only) that the token check reads. The deploy-time token
# (template parameter, via OOS) is stored as "deploy"; without one, a token is generated once into a
# root-only file for the operator to collect (never printed or logged). Rotation: token_auth.py.
step_api_tokens() {
  local tokens=$MUSICGEN_API_TOKENS_FILE first=$MUSICGEN_ETC_DIR/api-token.first
  if [[ -s $MUSICGEN_API_TOKEN_FILE ]]; then
    if ((DRY_RUN)); then
      plan "store the SHA-256 of the token in $MUSICGEN_API_TOKEN_FILE as '$DEPLOY_TOKEN_NAME' in $tokens"
      return 0
    fi
    python3 "$MUSICGEN_TOKEN_TOOL" --tokens "$tokens" add "$DEPLOY_TOKEN_NAME" <"$MUSICGEN_API_TOKEN_FILE" ||
      die "could not store the API token's hash"
  elif grep -qE '^[A-Za-z0-9]' "$tokens" 2>/dev/null; then
    skip "API tokens present ($tokens)"
  elif ((DRY_RUN)); then
    plan "generate a first API token into $first (mode 0600; its hash into $tokens)"
  else
    mkdir -p "$MUSICGEN_ETC_DIR"
    (umask 077 && python3 "$MUSICGEN_TOKEN_TOOL" --tokens "$tokens" new "$DEPLOY_TOKEN_NAME" >"$first") ||
      die "could not generate an API token"
    log "generated the first API token: read it once from $first (root only), then delete that file"
  fi
}

# The page password becomes a bcrypt hash in a root-only file that the proxy mounts. The
# plaintext file is removed once the page has answered with it (step finish).
# Does the password file match the hash already in the auth file? (htpasswd -v, password on stdin)
password_matches() {
  local auth=$1 hash pw tmp rc=0
  hash=$(awk -v u="$MUSICGEN_PAGE_USER" '$1 == u {print $2}' "$auth")
  [[ -n $hash ]] || return 1
  tmp=$(mktemp)
  printf '%s:%s\n' "$MUSICGEN_PAGE_USER" "$hash" >"$tmp"
  IFS= read -r pw <"$MUSICGEN_PAGE_PASSWORD_FILE" || true
  printf '%s\n' "$pw" | htpasswd -vi "$tmp" "$MUSICGEN_PAGE_USER" >/dev/null 2>&1 || rc=$?
  rm -f "$tmp"
  return "$rc"
}

hash_password_file() {
  local pw
  IFS= read -r pw <"$MUSICGEN_PAGE_PASSWORD_FILE" || true
  ((${#pw} >= 8)) || return 3
  printf '%s\n' "$pw" | htpasswd -niB -C 12 "$MUSICGEN_PAGE_USER"
}

step_page_auth() {
  local auth=$MUSICGEN_ETC_DIR/$PAGE_AUTH_NAME line rc=0
  if [[ -s $MUSICGEN_PAGE_PASSWORD_FILE ]]; then
    if ((DRY_RUN)); then
      plan "hash the page password from $MUSICGEN_PAGE_PASSWORD_FILE (bcrypt) into $auth (mode 0600)"
      return 0
    fi
    if [[ -s $auth ]] && have htpasswd; then
      secret_begin
      if password_matches "$auth"; then
        secret_end
        skip "page password unchanged ($auth)"
        return 0
      fi
      secret_end
    fi
    secret_begin
    line=$(hash_password_file) || rc=$?
    secret_end
    ((rc != 3)) || die "the page password in $MUSICGEN_PAGE_PASSWORD_FILE is shorter than 8 characters"
    ((rc == 0)) || die "could not hash the page password (htpasswd exit $rc)"
    [[ $line == "$MUSICGEN_PAGE_USER":\$2* ]] || die "htpasswd did not return a bcrypt hash"
    mkdir -p "$MUSICGEN_ETC_DIR"
    printf 'basicauth {\n\t%s %s\n}\n' "$MUSICGEN_PAGE_USER" "${line#*:}" | put_file 0600 "$auth" || true
  elif [[ -s $auth ]]; then
    skip "page password already set ($auth)"
  else
    die "no page password: write it to $MUSICGEN_PAGE_PASSWORD_FILE (mode 0600) and run again"
  fi
}

step_compose_env() {
  local img_triton img_ui img_export
  img_triton="${MUSICGEN_IMAGE_PREFIX:-musicgen}/triton:$MUSICGEN_IMAGE_TAG"
  img_ui="${MUSICGEN_IMAGE_PREFIX:-musicgen}/ui:$MUSICGEN_IMAGE_TAG"
  img_export="${MUSICGEN_IMAGE_PREFIX:-musicgen}/export:$MUSICGEN_IMAGE_TAG"
  {
    echo "# written by deploy/host/bootstrap.sh; no secrets in this file"
    echo "MUSICGEN_TRITON_IMAGE=$img_triton"
    echo "MUSICGEN_UI_IMAGE=$img_ui"
    echo "MUSICGEN_EXPORT_IMAGE=$img_export"
    echo "MUSICGEN_CHECKPOINT=$MUSICGEN_CHECKPOINT"
    echo "MUSICGEN_PRECISION=$MUSICGEN_PRECISION"
    echo "MUSICGEN_SOURCE_COMMIT=$SOURCE_COMMIT"
    echo "MUSICGEN_HTTP_PORT=$MUSICGEN_PAGE_PORT"
    echo "MUSICGEN_HTTPS_PORT=$MUSICGEN_HTTPS_PORT"
    echo "MUSICGEN_SITE_HOST=$(site_host)"
    echo "MUSICGEN_TLS_MODE=$MUSICGEN_TLS_MODE"
    echo "MUSICGEN_AUTH_FILE=$MUSICGEN_ETC_DIR/$PAGE_AUTH_NAME"
    echo "MUSICGEN_API_TOKENS_FILE=$MUSICGEN_API_TOKENS_FILE"
    echo "HF_ENDPOINT=$HF_ENDPOINT"
  } | put_file 0644 "$MUSICGEN_ETC_DIR/compose.env" || true
}

step_images() {
  local prefix=${MUSICGEN_IMAGE_PREFIX:-musicgen}
  if image_present "$prefix/triton:$MUSICGEN_IMAGE_TAG" && image_present "$prefix/ui:$MUSICGEN_IMAGE_TAG" &&
    image_present "$prefix/export:$MUSICGEN_IMAGE_TAG"; then
    skip "images for $MUSICGEN_IMAGE_TAG present"
    return 0
  fi
  if [[ -n $MUSICGEN_IMAGE_PREFIX ]]; then
    run compose --profile export pull
  else
    run compose --profile export build --pull
    run compose pull proxy
  fi
  CHANGED_SERVICE=1
}

step_export() {
  local stamp=$MUSICGEN_STATE_DIR/export.stamp want
  want="$MUSICGEN_CHECKPOINT $MUSICGEN_PRECISION $SOURCE_COMMIT"
  if [[ -r $stamp && $(<"$stamp") == "$want" ]]; then
    skip "weights for $MUSICGEN_CHECKPOINT ($MUSICGEN_PRECISION) already exported into the models volume"
    return 0
  fi
  run compose --profile export run --rm export
  if ((DRY_RUN)); then
    plan "record $stamp"
  else
    mkdir -p "$MUSICGEN_STATE_DIR"
    printf '%s\n' "$want" >"$stamp"
  fi
  CHANGED_SERVICE=1
}

service_unit() {
  local compose_cmd
  compose_cmd="/usr/bin/docker compose --project-name musicgen --project-directory $MUSICGEN_SOURCE_DIR/deploy --file $MUSICGEN_SOURCE_DIR/deploy/compose.yaml --env-file $MUSICGEN_ETC_DIR/compose.env"
  cat <<EOF
# written by deploy/host/bootstrap.sh
[Unit]
Description=MusicGen on Triton (docker compose: triton, ui, proxy)
Requires=docker.service
After=docker.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
# Containers must not read the instance metadata (the RAM role's credentials can read the secrets).
ExecStartPre=-/bin/sh -c 'iptables -C DOCKER-USER -d 100.100.100.200/32 -j REJECT 2>/dev/null || iptables -I DOCKER-USER -d 100.100.100.200/32 -j REJECT'
ExecStart=$compose_cmd up --detach --wait --wait-timeout 900 --remove-orphans
ExecStop=$compose_cmd down
TimeoutStartSec=1200
TimeoutStopSec=120

[Install]
WantedBy=multi-user.target
EOF
}

step_service() {
  local unit=$MUSICGEN_SYSTEMD_DIR/musicgen.service
  if service_unit | put_file 0644 "$unit"; then
    run systemctl daemon-reload
    CHANGED_SERVICE=1
  fi
  run systemctl enable musicgen.service
  if ((CHANGED_SERVICE)); then
    run systemctl restart musicgen.service
  else
    run systemctl start musicgen.service
  fi
}

step_readiness() {
  local deadline smoke=$MUSICGEN_SOURCE_DIR/deploy/host/smoke.py
  if ((DRY_RUN)); then
    plan "wait up to ${MUSICGEN_READY_TIMEOUT}s for http://127.0.0.1:8000/v2/health/ready"
    plan "export the proxy's CA certificate to $MUSICGEN_ETC_DIR/ca.crt (TLS mode $MUSICGEN_TLS_MODE)"
    plan "run $smoke: a real 0.5 s generation through Triton, and through the proxy on https port $MUSICGEN_HTTPS_PORT: the page refusing anonymous and accepting $MUSICGEN_PAGE_USER, the API refusing requests without a token"
    return 0
  fi
  deadline=$((SECONDS + MUSICGEN_READY_TIMEOUT))
  until curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:8000/v2/health/ready; do
    ((SECONDS < deadline)) || die "Triton not ready after ${MUSICGEN_READY_TIMEOUT}s (docker compose -p musicgen logs triton)"
    sleep 10
  done
  log "Triton reports ready; sending a real request"
  local args=(--triton http://127.0.0.1:8000 --page "https://127.0.0.1:$MUSICGEN_HTTPS_PORT" --server-name "$(site_host)"
    --user "$MUSICGEN_PAGE_USER" --timeout "$((deadline - SECONDS > 60 ? deadline - SECONDS : 60))")
  if [[ $MUSICGEN_TLS_MODE == internal ]]; then
    export_ca
    args+=(--ca-file "$MUSICGEN_ETC_DIR/ca.crt")
  fi
  if [[ -s $MUSICGEN_API_TOKEN_FILE ]]; then args+=(--token-file "$MUSICGEN_API_TOKEN_FILE"); fi
  # the plaintext password is removed after the first success; later runs check the 401 only
  if [[ -s $MUSICGEN_PAGE_PASSWORD_FILE ]]; then args+=(--password-file "$MUSICGEN_PAGE_PASSWORD_FILE"); fi
  python3 "$smoke" "${args[@]}" || die "the smoke request failed"
}

# The proxy's own CA (TLS mode internal): clients trust it with --ca-bundle. Public, so 0644.
export_ca() {
  local tmp
  tmp=$(mktemp)
  local deadline=$((SECONDS + 120))
  until compose cp proxy:/data/caddy/pki/authorities/local/root.crt "$tmp" >/dev/null 2>&1 && [[ -s $tmp ]]; do
    ((SECONDS < deadline)) || { rm -f "$tmp"; die "the proxy's CA certificate did not appear (docker compose -p musicgen logs proxy)"; }
    sleep 3
  done
  install -m 0644 "$tmp" "$MUSICGEN_ETC_DIR/ca.crt"
  rm -f "$tmp"
  log "the proxy's CA certificate: $MUSICGEN_ETC_DIR/ca.crt (give it to API clients: --ca-bundle)"
}

# The name the certificate is for: the setting, else the public IP (metadata service), else localhost.
site_host() {
  local ip=""
  if [[ -n $MUSICGEN_SITE_HOST ]]; then
    printf '%s' "$MUSICGEN_SITE_HOST"
    return 0
  fi
  if ((!DRY_RUN)); then
    ip=$(curl -fsS --max-time 3 http://100.100.100.200/latest/meta-data/public-ipv4 2>/dev/null || true)
  fi
  if [[ $ip =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then printf '%s' "$ip"; else printf 'localhost'; fi
}

# The page's public address for the report: from the settings, else https://<site host>/.
public_url() {
  if [[ -n $MUSICGEN_PUBLIC_URL ]]; then
    printf '%s' "$MUSICGEN_PUBLIC_URL"
  elif ((MUSICGEN_HTTPS_PORT == 443)); then
    printf 'https://%s/' "$(site_host)"
  else
    printf 'https://%s:%s/' "$(site_host)" "$MUSICGEN_HTTPS_PORT"
  fi
}

step_finish() {
  local url
  url=$(public_url)
  if ((DRY_RUN)); then
    plan "remove the plaintext page password and API token files, mark $MUSICGEN_STATE_DIR/bootstrap.done, report SUCCESS ($url)"
    notify_cloud SUCCESS "page ready" "$url"
    return 0
  fi
  rm -f "$MUSICGEN_PAGE_PASSWORD_FILE" "$MUSICGEN_API_TOKEN_FILE"
  mkdir -p "$MUSICGEN_STATE_DIR"
  rm -f "$MUSICGEN_STATE_DIR/driver-reboots"
  date -u +%Y-%m-%dT%H:%M:%SZ >"$MUSICGEN_STATE_DIR/bootstrap.done"
  write_status "SUCCESS $url"
  FINISHED=1
  notify_cloud SUCCESS "MusicGen page ready" "$url"
  log "done: the page is at $url (user $MUSICGEN_PAGE_USER)"
}

# --- main ---------------------------------------------------------------------------------------

main() {
  local steps s
  while (($#)); do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      --env-file) ENV_FILE=${2:?--env-file needs a file}; shift ;;
      --log-file) LOG_FILE=${2:?--log-file needs a file}; shift ;;
      --only) ONLY=${2:?--only needs step names}; shift ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
  done
  if [[ -n $ENV_FILE ]]; then load_env_file "$ENV_FILE"; fi
  set_defaults
  if [[ -n $LOG_FILE ]]; then
    mkdir -p "$(dirname "$LOG_FILE")"
    exec > >(tee -a "$LOG_FILE") 2>&1
  fi
  trap on_exit EXIT
  validate_settings
  steps=${ONLY//,/ }
  steps=${steps:-$STEPS_ALL}
  for s in $steps; do
    [[ " $STEPS_ALL " == *" $s "* ]] || die "unknown step $s (steps: $STEPS_ALL)"
  done
  SOURCE_COMMIT=$(source_commit || echo "unknown")
  MUSICGEN_IMAGE_TAG=${MUSICGEN_IMAGE_TAG:-${SOURCE_COMMIT:0:12}}
  [[ $MUSICGEN_IMAGE_TAG != unknown ]] || MUSICGEN_IMAGE_TAG=local
  if ((DRY_RUN)); then
    echo "DRY RUN: musicgen bootstrap plan (nothing on this machine is changed)"
  else
    write_status "RUNNING"
  fi
  log "checkpoint $MUSICGEN_CHECKPOINT ($MUSICGEN_PRECISION), steps: $steps"
  for s in $steps; do
    STEP=$s
    "step_$s"
  done
  STEP=end
  FINISHED=1
  if ((DRY_RUN)); then echo "DRY RUN complete"; fi
}

main "$@"
