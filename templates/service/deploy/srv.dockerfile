FROM runtime AS @name@-srv
COPY --from=builder /src/target/release/@name@-srv /usr/local/bin/@name@-srv
ENV @UPPER@_SRV__SERVER__IP=0.0.0.0 \
    @UPPER@_SRV__SERVER__PORT=50051 \
    @UPPER@_SRV__DATABASE__DATA_DIR=/app/data
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["@name@-srv", "probe"]
ENTRYPOINT ["@name@-srv"]
CMD ["serve"]

