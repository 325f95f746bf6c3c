// The driver scenario (../SCENARIO.md) with node-postgres (pg 8.23.1, pure JavaScript client).
//
// Driver features exercised:
// - one `pg.Client` through pgshift kept open for the whole run (expand → switch → contract);
// - named prepared statements: query config objects `{name, text, values}`, so node-postgres
//   sends Parse once per name on the connection (Parse/Bind/Describe portal/Execute/Sync) and
//   afterwards only Bind/Describe/Execute/Sync, reusing the server-side statement across flips;
// - unnamed extended-protocol queries: every SELECT step run a second time as a plain
//   parameterized query (no name: Parse of the unnamed statement each time), same results;
// - parameters sent in text format with unspecified types (the server infers them), results
//   in text format parsed by pg-types: int4 `age_int` → JS number, text → string, int8
//   `count(*)` → string;
// - rows as objects keyed by column name (the names pgshift reports in RowDescription), and
//   affected-row counts from the CommandComplete tag (`rowCount`);
// - a simple-protocol query (no values) for step 6 and a second, direct client for step 7.
//
// Flip protocol: prints `flip PHASE` on stdout and waits for a line on stdin.

'use strict'

const readline = require('readline')
const { Client } = require('pg')

const INS_OLD = 'INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)'
const INS_NEW = 'INSERT INTO users (id, display_name, age_int) VALUES ($1, $2, $3)'
const SEL_OLD = 'SELECT user_name, age FROM users WHERE id = $1'
const SEL_NEW = 'SELECT display_name, age_int FROM users WHERE id = $1'
const UPD_OLD = 'UPDATE users SET user_name = $1 WHERE id = $2'
const UPD_NEW = 'UPDATE users SET age_int = $1 WHERE id = $2'
const DEL = 'DELETE FROM users WHERE id = $1'

// Statement name → SQL, each used with `{name, text, values}`.
const STATEMENTS = {
  ins_old: INS_OLD,
  ins_new: INS_NEW,
  sel_old: SEL_OLD,
  sel_new: SEL_NEW,
  upd_old: UPD_OLD,
  upd_new: UPD_NEW,
  del: DEL,
}

// Where we are, for messages.
let where = 'start'

function fail(message) {
  process.stderr.write(`node-postgres: ${where}: ${message}\n`)
  process.exit(1)
}

function show(value) {
  return JSON.stringify(value, (_, v) => (v === undefined ? '<undefined>' : v))
}

function check(what, expected, got) {
  if (show(expected) !== show(got)) {
    fail(`${what}: expected ${show(expected)}, got ${show(got)}`)
  }
}

// Lines from the harness, one per `flip`.
const lines = []
const waiting = []
const input = readline.createInterface({ input: process.stdin })
input.on('line', (line) => {
  const resolve = waiting.shift()
  if (resolve) resolve(line)
  else lines.push(line)
})
input.on('close', () => {
  for (const resolve of waiting.splice(0)) resolve(null)
})

function nextLine() {
  if (lines.length > 0) return Promise.resolve(lines.shift())
  return new Promise((resolve) => waiting.push(resolve))
}

async function flip(phase) {
  process.stdout.write(`flip ${phase}\n`)
  const answer = await nextLine()
  if (answer === null || answer.trim() !== 'ok') {
    fail(`flip ${phase}: the harness answered ${show(answer)} instead of "ok"`)
  }
}

async function connect(url, label) {
  const client = new Client({ connectionString: url })
  client.on('error', (err) => fail(`${label} connection error: ${err.stack || err}`))
  try {
    await client.connect()
  } catch (err) {
    fail(`cannot connect ${label} (${url}): ${err.stack || err}`)
  }
  return client
}

// Runs `query` (a config object or text); a server error is a failed check.
async function run(client, what, query) {
  try {
    return await client.query(query)
  } catch (err) {
    const detail = [err.message, err.code && `SQLSTATE ${err.code}`, err.detail, err.hint]
      .filter(Boolean)
      .join('; ')
    fail(`${what}: ${show(query)} failed: ${detail}`)
  }
}

// A named prepared statement execution.
function named(name, values) {
  return { name, text: STATEMENTS[name], values }
}

// `name(values)` affects `expected` rows.
async function exec(app, name, values, expected = 1) {
  const result = await run(app, `${name}${show(values)}`, named(name, values))
  check(`${name}${show(values)}: affected rows`, expected, result.rowCount)
}

// `name(id)` returns `expected` (null: no row) as `[first, second]` under the statement's
// column names, with the JS types given in `types` (['string', 'number'] …); run as the
// named prepared statement, then again as an unnamed parameterized query.
async function select(app, name, id, columns, types, expected) {
  for (const [how, query] of [
    ['named', named(name, [id])],
    ['unnamed', { text: STATEMENTS[name], values: [id] }],
  ]) {
    const what = `${name}(${id}) ${how}`
    const result = await run(app, what, query)
    check(
      `${what}: columns`,
      columns,
      result.fields.map((f) => f.name)
    )
    if (expected === null) {
      check(`${what}: rows`, [], result.rows)
      continue
    }
    check(`${what}: row count`, 1, result.rows.length)
    const row = result.rows[0]
    const got = columns.map((c) => row[c])
    check(`${what}: row`, expected, got)
    check(
      `${what}: JS types`,
      types,
      got.map((v) => typeof v)
    )
  }
}

async function main() {
  const app = await connect(process.env.PGSHIFT_URL, 'through pgshift')
  const direct = await connect(process.env.DIRECT_URL, 'direct')

  const phases = [
    ['expand', 100],
    ['switch', 200],
    ['contract', 300],
  ]
  for (const [done, [phase, base]] of phases.entries()) {
    if (phase !== 'expand') {
      where = `flip to ${phase}`
      await flip(phase)
    }
    const [a, b, c] = [base + 1, base + 2, base + 3]
    const step = (n) => {
      where = `${phase} step ${n}`
    }

    step(1)
    await exec(app, 'ins_old', [a, 'old-a', '7'])
    await exec(app, 'ins_new', [b, 'new-b', 8])

    step(2)
    await select(app, 'sel_new', a, ['display_name', 'age_int'], ['string', 'number'], ['old-a', 7])
    await select(app, 'sel_old', b, ['user_name', 'age'], ['string', 'string'], ['new-b', '8'])

    step(3)
    await exec(app, 'upd_old', ['renamed', b])
    await select(app, 'sel_new', b, ['display_name', 'age_int'], ['string', 'number'], ['renamed', 8])

    step(4)
    await exec(app, 'upd_new', [9, a])
    await select(app, 'sel_old', a, ['user_name', 'age'], ['string', 'string'], ['old-a', '9'])

    step(5)
    await exec(app, 'ins_old', [c, 'gone', '1'])
    await exec(app, 'del', [c])
    await select(app, 'sel_old', c, ['user_name', 'age'], null, null)

    step(6)
    const count = await run(app, 'count', 'SELECT count(*) FROM users')
    check('SELECT count(*) FROM users (int8 → string)', [String(3 + 2 * (done + 1))], count.rows.map((r) => r.count))

    step(7)
    const table = await run(direct, 'direct read', {
      text: 'SELECT user_name, display_name, age, age_int FROM users WHERE id IN ($1, $2) ORDER BY id',
      values: [a, b],
      rowMode: 'array',
    })
    const expected =
      phase === 'contract'
        ? [
            [null, 'old-a', null, 9],
            [null, 'renamed', null, 8],
          ]
        : [
            ['old-a', 'old-a', '9', 9],
            ['renamed', 'renamed', '8', 8],
          ]
    check('the table, read directly', expected, table.rows)
  }

  where = 'end'
  await app.end()
  await direct.end()
  input.close()
  process.exit(0)
}

main().catch((err) => fail(`unexpected: ${err.stack || err}`))
