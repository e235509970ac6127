-- One PostgreSQL instance, one database each for MLflow, MLflow's users and Prefect (infra/compose.yaml).
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
