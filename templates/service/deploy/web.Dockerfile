# syntax=docker/dockerfile:1
# @name@-web: the REST gateway. Build from the repository root:
#   docker build -f deploy/@name@-web.Dockerfile -t @name@-web .
# Dependencies are cooked in their own layer (cargo-chef), so a code change rebuilds only
# the workspace crates. The runtime image is Debian slim with the binary, run as a non-root user.

FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Build flags for bundled C dependencies (SQLite) must be in place before the cook.
COPY .cargo .cargo
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin @name@-web
COPY . .
RUN cargo build --release --locked --bin @name@-web

FROM debian:bookworm-slim AS runtime
# The group gets the user's id, so the image's 10001:10001 names both.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --create-home app
WORKDIR /app
COPY --from=builder /src/target/release/@name@-web /usr/local/bin/@name@-web
USER 10001:10001
ENV @UPPER@_WEB__SERVER__IP=0.0.0.0 \
    @UPPER@_WEB__SERVER__PORT=@web_port@
EXPOSE @web_port@
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["@name@-web", "probe"]
ENTRYPOINT ["@name@-web"]
CMD ["serve"]
