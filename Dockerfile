# syntax=docker/dockerfile:1
# keshless-ops: build with cargo, run on slim Debian with the PostgreSQL
# client of the production server's major version.
#
#   docker build -t keshless-ops .
#   docker run --rm --env-file worker.env keshless-ops            # the worker (CMD)
#   docker run --rm --env-file worker.env keshless-ops backups list postgres

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
# pg_dump must be the server's major version or newer (src/jobs/postgres_backup.rs
# refuses an older one). tests/dockerfile.rs keeps this equal to
# keshless_ops::config::POSTGRES_SERVER_MAJOR_VERSION.
ARG POSTGRES_MAJOR=17

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /build
# Dependencies first, against placeholder sources: this layer is rebuilt only
# when Cargo.toml or Cargo.lock change, not on every edit of src/.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY migrations ./migrations
COPY src ./src
# touch: the placeholders are older than the real sources, but make sure
# cargo rebuilds the crate itself rather than keep the placeholder binary.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin keshless-ops \
    && install -m 0755 target/release/keshless-ops /usr/local/bin/keshless-ops

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG DEBIAN_RELEASE
ARG POSTGRES_MAJOR
# The PostgreSQL apt repository (PGDG) has every supported major for every
# Debian release; Debian itself ships only one. curl serves the HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && install -d /usr/share/postgresql-common/pgdg \
    && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
         https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${DEBIAN_RELEASE}-pgdg main" \
         > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-${POSTGRES_MAJOR} \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dump --version | grep -q "PostgreSQL) ${POSTGRES_MAJOR}\."

RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin keshless
COPY --from=build /usr/local/bin/keshless-ops /usr/local/bin/keshless-ops

USER keshless
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/healthz" || exit 1
ENTRYPOINT ["keshless-ops"]
CMD ["worker"]
