@UPPER@_WEB_PORT=${@UPPER@_WEB_PORT:-@web_port@}
start_web @name@ "$@UPPER@_WEB_PORT"
tries+="
  curl -s -X POST http://127.0.0.1:$@UPPER@_WEB_PORT/@prefix@/v1/@name@ -H \"Authorization: Bearer \$TOKEN\" \\
    -H 'content-type: application/json' -d '{\"name\":\"first\",\"price\":100}'
  curl -s \"http://127.0.0.1:$@UPPER@_WEB_PORT/@prefix@/v1/@name@/list?pn=1&psize=5\""
