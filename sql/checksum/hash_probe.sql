-- Probe of the built-in extended hash functions the checksum reconcile uses.
-- Both servers must return identical rows (same algorithms, byte order and text
-- encoding) before segment digests computed on one can be compared with the
-- other's; otherwise the reconcile hashes canonical text with md5 instead.
-- Runs inside the reconcile's snapshot, after SET LOCAL extra_float_digits = 1.
SELECT
    hashint8extended(probe.i, 42),
    hashfloat8extended(probe.f, 42),
    hash_numeric_extended(probe.n, 42),
    hash_numeric_extended(probe.f::text::numeric, 42),
    hashtextextended(probe.t COLLATE "C", 42),
    uuid_hash_extended(probe.u, 42)
FROM (
    VALUES
        (0::bigint, 0::float8, 0::numeric, ''::text,
         '00000000-0000-0000-0000-000000000000'::uuid),
        (-1, 0.1, 1.50, 'A', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
        (9223372036854775807, 1e300, 'NaN', 'jobs 10001-A', 'ffffffff-ffff-ffff-ffff-ffffffffffff'),
        (-9223372036854775808, 'Infinity', -123456789.000000001, 'é ж 中 🙂', NULL),
        (42, 'NaN', 500, repeat('x', 300), NULL)
) AS probe (i, f, n, t, u)
