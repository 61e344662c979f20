-- The seed's jobs table: the shape `propagator demo`, the tests and the benchmarks use.
-- A production table needs only the key columns (unique together) and the mapped columns.
CREATE TABLE public.jobs (
    id bigserial PRIMARY KEY,
    job integer NOT NULL,
    release text NOT NULL,
    fab_order numeric(12, 2),
    paint_color text,
    stage text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job, release)
)
