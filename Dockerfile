# syntax=docker/dockerfile:1
#
# pgshift container image.
#   docker build -t pgshift .
#   docker run --rm -p 6432:6432 -p 9187:9187 \
#       -v "$PWD/config/docker.toml:/etc/pgshift/pgshift.toml:ro" pgshift
# or, with a PostgreSQL beside it: docker compose up --build

############################ builder ############################
FROM rust:1-bookworm AS builder
WORKDIR /src

# --- dependency layer: rebuilt only when Cargo.toml / Cargo.lock change ---
# Build the dependency graph against stub sources. Every target that Cargo.toml declares
# explicitly ([[bin]], [[bench]], [[test]], [[example]], or any `path = "…"`) gets a stub file
# too, because cargo refuses a manifest whose declared target files are missing. Afterwards the
# stub build of our own crate is forgotten; the compiled dependencies stay in target/.
COPY Cargo.toml Cargo.lock ./
RUN set -eux; \
    mkdir -p src; \
    echo 'fn main() {}' > src/main.rs; \
    echo '' > src/lib.rs; \
    awk ' \
        function flush() { if (path != "") print path; else if (dir != "" && name != "") print dir "/" name ".rs"; dir = ""; name = ""; path = "" } \
        /^\[/ { flush() } \
        /^\[\[bin\]\]/     { dir = "src/bin" } \
        /^\[\[bench\]\]/   { dir = "benches" } \
        /^\[\[test\]\]/    { dir = "tests" } \
        /^\[\[example\]\]/ { dir = "examples" } \
        /^[ \t]*name[ \t]*=/ { split($0, a, "\""); name = a[2] } \
        /^[ \t]*path[ \t]*=/ { split($0, a, "\""); path = a[2] } \
        END { flush() } \
    ' Cargo.toml | while read -r f; do \
        case "$f" in *.rs) mkdir -p "$(dirname "$f")"; [ -e "$f" ] || echo 'fn main() {}' > "$f";; esac; \
    done; \
    cargo build --release --locked; \
    rm -rf src benches tests examples \
        target/release/pgshift target/release/pgshift.d \
        target/release/deps/pgshift-* target/release/deps/libpgshift-* \
        target/release/.fingerprint/pgshift-*

# --- the real build ---
COPY . .
# COPY keeps the context's mtimes, which may be older than the stub build: touch the sources
# so cargo can never mistake the stub artefacts for fresh ones.
RUN set -eux; \
    find src -name '*.rs' -exec touch {} +; \
    [ ! -e build.rs ] || touch build.rs; \
    cargo build --release --locked; \
    strip target/release/pgshift; \
    install -D -m 0755 target/release/pgshift /out/pgshift

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 pgshift; \
    useradd --system --uid 10001 --gid pgshift --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin pgshift; \
    mkdir -p /etc/pgshift

COPY --from=builder /out/pgshift /usr/local/bin/pgshift
# A default config that expects PostgreSQL at postgres:5432 (docker-compose.yml's service).
# Mount your own over it: -v ./my.toml:/etc/pgshift/pgshift.toml:ro
COPY config/docker.toml /etc/pgshift/pgshift.toml

USER pgshift:pgshift
WORKDIR /tmp
# 6432: PostgreSQL clients; 9187: Prometheus /metrics, /healthz, /readyz
EXPOSE 6432 9187
# pgshift drains sessions on SIGTERM ([proxy].shutdown_grace); give `docker stop -t` enough time.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgshift"]
CMD ["serve", "--config", "/etc/pgshift/pgshift.toml"]
