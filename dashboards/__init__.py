"""The Streamlit dashboard (installed as isopo_bench.dashboards). It reads MLflow only and never imports
torch: `isopo-bench dashboard` starts `app.py` in this folder."""
