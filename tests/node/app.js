// node-postgres (pg) as an application uses it, for tests/it/apps/drivers.rs.
//
//     node tests/node/app.js DSN PREFIX
//
// Writes PREFIX_acct and PREFIX_item (created by the caller) with named (server-side
// prepared) statements, untyped parameters (pg declares no parameter types: every
// parameter is oid 0, text, and Buffers go as binary parameters of oid 0), RETURNING,
// transactions that commit, roll back and fail on constraints, and a pool of clients in
// parallel. Prints one line per observation, then the tables: the caller compares the
// output of a run without replication with runs through capgate. Exits 1 when an
// observation is wrong on its own.
"use strict";
const { Client, Pool } = require("pg");

const [dsn, p] = process.argv.slice(2);
const emit = (...parts) => console.log(parts.map((x) => (typeof x === "string" ? x : JSON.stringify(x))).join(" "));
const expect = (cond, what) => {
  if (!cond) {
    console.log(`FAIL ${what}`);
    process.exit(1);
  }
};

async function main() {
  const c = new Client({ connectionString: dsn });
  await c.connect();
  // Named statements: parsed once on the server, then Bind/Execute only.
  for (let i = 1; i <= 5; i++) {
    await c.query({ name: "ins_acct", text: `INSERT INTO ${p}_acct (id, owner, balance) VALUES ($1, $2, $3)`, values: [i, `owner${i}`, "100.00"] });
  }
  for (const name of ["n-a", "n-b", "n-c"]) {
    const r = await c.query({
      name: "ins_item",
      text: `INSERT INTO ${p}_item (name, payload, tags, doc, qty) VALUES ($1, $2, $3, $4, $5) RETURNING id, name, qty`,
      values: [name, Buffer.from([0, 1, 2, 254, 255]), ["x", "y, z"], { name, n: [1, null] }, 3],
    });
    emit("returning", r.rows);
  }
  // The same named SELECT three times (no Describe after the first).
  for (let k = 0; k < 3; k++) {
    const r = await c.query({ name: "sel_acct", text: `SELECT id, owner, balance::text FROM ${p}_acct WHERE id >= $1 ORDER BY id`, values: [k] });
    emit("select", r.rowCount);
  }
  // A transaction that commits.
  await c.query("BEGIN");
  await c.query(`UPDATE ${p}_acct SET balance = balance - $1 WHERE id = $2`, ["10.25", 1]);
  await c.query(`UPDATE ${p}_acct SET balance = balance + $1 WHERE id = $2`, ["10.25", 2]);
  await c.query("COMMIT");
  // One that rolls back.
  await c.query("BEGIN");
  await c.query(`INSERT INTO ${p}_item (name, qty) VALUES ($1, $2)`, ["rolled-back", 1]);
  await c.query(`DELETE FROM ${p}_acct WHERE id = $1`, [3]);
  await c.query("ROLLBACK");
  const gone = await c.query(`SELECT count(*)::int AS n FROM ${p}_item WHERE name = 'rolled-back'`);
  expect(gone.rows[0].n === 0, "a rolled-back insert is visible");
  // A constraint error: the transaction is lost whole.
  await c.query("BEGIN");
  await c.query(`UPDATE ${p}_acct SET balance = balance + 1 WHERE id = 4`);
  try {
    await c.query(`INSERT INTO ${p}_acct (id, owner, balance) VALUES ($1, $2, $3)`, [6, "owner1", "1"]);
    expect(false, "a unique violation was accepted");
  } catch (e) {
    emit("unique violation", e.code);
  }
  try {
    await c.query(`UPDATE ${p}_acct SET balance = 0 WHERE id = 5`);
    expect(false, "a statement in a failed transaction was accepted");
  } catch (e) {
    emit("in failed transaction", e.code);
  }
  await c.query("COMMIT");
  // Several statements in one simple Query.
  await c.query(`UPDATE ${p}_acct SET balance = balance + 2 WHERE id = 5; INSERT INTO ${p}_item (name, qty) VALUES ('multi', 9)`);
  await c.end();

  // A pool: transfers in parallel from several connections.
  const pool = new Pool({ connectionString: dsn, max: 4 });
  await Promise.all(
    [1, 2, 4, 5].map(async (id) => {
      const pc = await pool.connect();
      try {
        for (let k = 0; k < 5; k++) {
          await pc.query("BEGIN");
          await pc.query(`UPDATE ${p}_acct SET balance = balance - 1 WHERE id = $1`, [id]);
          await pc.query(`INSERT INTO ${p}_item (name, qty) VALUES ($1, $2)`, [`pool-${id}-${k}`, k]);
          await pc.query("COMMIT");
        }
      } finally {
        pc.release();
      }
    }),
  );
  await pool.end();

  const d = new Client({ connectionString: dsn });
  await d.connect();
  for (const r of (await d.query(`SELECT id, owner, balance::text FROM ${p}_acct ORDER BY id`)).rows) emit("acct", r);
  const items = await d.query(`SELECT id, name, md5(payload) AS payload, tags, doc, qty, ref IS NOT NULL AS has_ref FROM ${p}_item ORDER BY name`);
  for (const r of items.rows) {
    delete r.id; // pool inserts interleave: their serial ids differ run to run
    emit("item", r);
  }
  await d.end();
  emit("done");
}

main().catch((e) => {
  console.log(`FAIL ${e.stack || e}`);
  process.exit(1);
});
