FROM runtime AS @name@-web
COPY --from=builder /src/target/release/@name@-web /usr/local/bin/@name@-web
ENV @UPPER@_WEB__SERVER__IP=0.0.0.0 \
    @UPPER@_WEB__SERVER__PORT=@web_port@
EXPOSE @web_port@
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["@name@-web", "probe"]
ENTRYPOINT ["@name@-web"]
CMD ["serve"]

