-- One PostgreSQL instance, one database each for MLflow and Prefect (infra/compose.yaml).
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
