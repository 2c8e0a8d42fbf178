# @name@ in `make dev` (sourced by scripts/dev.sh; written by make new-service).
start_srv @name@ "$SRV_COUNT"
services+=" @name@-srv"
