#!/usr/bin/env bash
# The project's own services (no engine) and Zeus 0.16.0 for the lent NVIDIA H200 host (Python 3.12, glibc 2.39,
# no network), less what the host already has (h200-host-packages.txt). What the window-edge and power benches
# (bench/window_edges.py, bench/power_response.py) and bench/h200_protocol.py import there.
# Excluded: what Zeus declares but its ZeusMonitor never calls (pandas, scikit-learn and scipy; amdsmi for AMD
# GPUs; tyro for its CLI). Its monitor package imports sklearn.metrics.auc at import time, so the benches put
# bench/zeus_stand_in (one function, named as a stand-in) on the path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "${LEM:-lem}" bundle build 'zeus==0.16.0' \
  'pydantic-settings>=2.3' 'sqlalchemy>=2.0' 'alembic>=1.13' 'celery[redis]>=5.4' 'croniter>=6' \
  --host-packages "$here/h200-host-packages.txt" --python-version 3.12 --glibc 2.39 \
  --exclude pandas --exclude scikit-learn --exclude amdsmi --exclude tyro \
  --name services-h200 --part-mib "${PART_MIB:-40}" --out "${OUT:-bundle-services-h200}" "$@"
