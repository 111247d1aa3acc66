//! The Prometheus + Alertmanager + Grafana stack, generated from the code's definitions.
