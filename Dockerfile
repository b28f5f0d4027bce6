# microgateway container image.
#
#   docker build -t microgateway .                     # profile-guided build
#   docker build --build-arg PGO=0 -t microgateway .   # one plain release build
#   docker run -p 4485:4485 -p 7749:7749 \
#     -v "$PWD/config:/etc/microgateway:ro" microgateway
#
# The configuration is read from /etc/microgateway/microgateway.yaml (mount
# your own directory there: relative paths in it — TLS files, templates,
# `${file:}` secrets — resolve against that directory). The image ships the
# embedded default configuration there. Writable state (the authorization
# server's signing key and SQLite store, downloaded settings) goes to
# /var/lib/microgateway: point `authorization_server.signing_key`/`store`
# and `api_gateway.cache_file` there (absolute paths).
#
# The API ports bind 0.0.0.0 in the container (MCGW_PORTS_BIND). The admin
# port keeps its 127.0.0.1 default, which is enough for the HEALTHCHECK below;
# set MCGW_ADMIN_BIND=0.0.0.0 to scrape /metrics from outside.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# The image's binary is profile-guided: bench/pgo-build.sh trains an
# instrumented build on the data path (plain, throttled, balanced and
# OAuth2 routes, TLS, HTTP/2) and builds again with that profile, ~24%
# fewer instructions per proxied request for two more builds and a minute
# of training; then BOLT (Debian's bolt-19) lays that binary out again
# from a second training run (a build BOLT refuses to lay out stays as
# the profile guided it, said in the build's output). Its tools (wrk, h2load, llvm-bolt) come from
# Debian's mirror. PGO=0 builds once, plainly (what `cargo build
# --release` makes).
ARG PGO=1
COPY bench/lib.sh bench/pgo-build.sh ./bench/
RUN touch src/main.rs src/lib.rs \
    && if [ "$PGO" = 1 ]; then \
         bench/pgo-build.sh >/tmp/pgo-build.out && cp "$(tail -1 /tmp/pgo-build.out)" target/release/microgateway; \
       else \
         cargo build --release --locked; \
       fi \
    && strip target/release/microgateway

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 microgateway \
    && useradd --system --uid 10001 --gid microgateway --home-dir /var/lib/microgateway \
       --shell /usr/sbin/nologin microgateway \
    && mkdir -p /etc/microgateway /var/lib/microgateway \
    && chown microgateway:microgateway /var/lib/microgateway
COPY --from=build /src/target/release/microgateway /usr/local/bin/microgateway
COPY config/ /etc/microgateway/
# The embedded default keeps its signing key and token store next to the
# repository; in the image they belong in the writable state directory.
# Written into the shipped file, not set by variables: a variable would
# apply to every configuration mounted over it too.
RUN sed -i 's#\.\./data/#/var/lib/microgateway/#' /etc/microgateway/microgateway.yaml
ENV MCGW_PORTS_BIND=0.0.0.0 \
    MCGW_LOG=info
USER microgateway:microgateway
WORKDIR /var/lib/microgateway
# 4485 http; 4486 https in the embedded configuration (7749 in DESIGN's
# example; either needs `tls:`); 9485 admin (health, metrics, REST).
EXPOSE 4485 4486 7749 9485
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["microgateway", "health", "--url", "http://127.0.0.1:9485/health/ready"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["microgateway"]
CMD ["start", "--config", "/etc/microgateway/microgateway.yaml"]
