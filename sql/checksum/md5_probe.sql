-- Probe of the canonical text forms the md5 fallback of the checksum reconcile
-- hashes. Both servers must return identical rows; otherwise the reconcile falls
-- back to streaming both tables. ASCII only, so it works in any server encoding.
-- Runs inside the reconcile's snapshot, after SET LOCAL extra_float_digits = 1.
SELECT
    md5(convert_to('42:' || probe.t, 'UTF8')),
    trim_scale(probe.n)::text,
    probe.f::text,
    probe.i::text,
    probe.b::text,
    probe.u::text
FROM (
    VALUES
        ('jobs'::text, 1.50::numeric, 0.1::float8, -1::bigint, true,
         'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid),
        ('', 'NaN', 1e300, 9223372036854775807, false, NULL),
        ('x', -0.000100, 'Infinity', 0, NULL, NULL)
) AS probe (t, n, f, i, b, u)
