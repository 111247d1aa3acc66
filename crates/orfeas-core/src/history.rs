//! Job history in SQLite (WAL): jobs, parameters, outputs, scores, errors.
