-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d).
-- The application database `fitml` (POSTGRES_DB) holds the Feast registry, the offline
-- feature tables and the session event store. MLflow and Optuna each migrate their own
-- tables with alembic and keep their own `alembic_version` table, so each gets a database.
CREATE DATABASE fitml_mlflow;
CREATE DATABASE fitml_optuna;
