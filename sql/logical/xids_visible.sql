-- Whether every one of these transactions (32-bit xids, as pgoutput's Begin gives them) is
-- visible to a snapshot taken now. A commit reaches the slot once its WAL is flushed, which
-- can be a moment before the committing session leaves the list of running transactions:
-- a read of production in that moment still sees the old row. Each xid is widened to 64
-- bits with the epoch of the snapshot's xmax (it committed just before it).
WITH snapshot AS (
    SELECT taken.snap, pg_catalog.pg_snapshot_xmax(taken.snap)::text::bigint AS xmax
      FROM (SELECT pg_catalog.pg_current_snapshot() AS snap) AS taken
), widened AS (
    SELECT s.snap,
           CASE WHEN ((s.xmax >> 32) << 32) + x.xid > s.xmax
                THEN ((s.xmax >> 32) << 32) + x.xid - 4294967296
                ELSE ((s.xmax >> 32) << 32) + x.xid END AS full_xid
      FROM snapshot AS s, pg_catalog.unnest(%(xids)s::bigint[]) AS x(xid)
)
SELECT coalesce(bool_and(pg_catalog.pg_visible_in_snapshot(full_xid::text::xid8, snap)), true)
  FROM widened
