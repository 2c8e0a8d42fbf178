# syntax=docker/dockerfile:1
# user-srv: the gRPC user service. Build from the repository root:
#   docker build -f deploy/user-srv.Dockerfile -t user-srv .
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
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin user-srv
COPY . .
RUN cargo build --release --locked --bin user-srv

FROM debian:bookworm-slim AS runtime
# The group gets the user's id, so the image's 10001:10001 names both.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --create-home app
RUN mkdir -p /app/data && chown app:app /app/data
WORKDIR /app
COPY --from=builder /src/target/release/user-srv /usr/local/bin/user-srv
USER 10001:10001
ENV USER_SRV__SERVER__IP=0.0.0.0 \
    USER_SRV__SERVER__PORT=50051 \
    USER_SRV__SERVER__ADMIN_PORT=9464 \
    USER_SRV__DATABASE__DATA_DIR=/app/data
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["user-srv", "probe"]
ENTRYPOINT ["user-srv"]
CMD ["serve"]
