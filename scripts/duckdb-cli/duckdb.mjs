#!/usr/bin/env node
// A stand-in for the DuckDB command-line shell, on DuckDB's own engine
// (libduckdb from the official @duckdb/node-api package), for machines
// where the real `duckdb` CLI cannot be installed (see docs/EXIT.md). It does
// what Strata's exit recipes need and no more:
//
//   duckdb [OPTIONS] [DATABASE] [-c SQL]...   SQL from -c, else from stdin
//   -csv | -list | -noheader | -header | -separator SEP | -version
//
// Results of statements that return rows print in -list mode (columns
// joined by "|", a header line first) unless -csv is given; NULLs print
// as empty. The real CLI prints a box table by default: scripts that
// parse output should use -csv or -list, or COPY … TO a file, which
// behave the same in both.
import { DuckDBInstance, version } from '@duckdb/node-api';
import { readFileSync } from 'node:fs';

const args = process.argv.slice(2);
let db = ':memory:';
let sep = '|';
let header = true;
let csv = false;
const commands = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  switch (a) {
    case '-c': case '-s': commands.push(args[++i] ?? ''); break;
    case '-csv': csv = true; sep = ','; break;
    case '-list': csv = false; sep = '|'; break;
    case '-noheader': header = false; break;
    case '-header': header = true; break;
    case '-separator': sep = args[++i] ?? sep; break;
    case '-version': case '--version':
      console.log(`${version()} (strata's stand-in for the duckdb CLI: scripts/duckdb-cli)`);
      process.exit(0);
    default:
      if (a.startsWith('-')) {
        console.error(`duckdb (stand-in): unsupported option ${a}`);
        process.exit(2);
      }
      db = a;
  }
}
if (commands.length === 0) commands.push(readFileSync(0, 'utf8'));

function field(v) {
  if (v === null || v === undefined) return '';
  const s = typeof v === 'object' && typeof v.toString === 'function' ? v.toString() : String(v);
  if (csv && /[",\n\r]/.test(s)) return '"' + s.replaceAll('"', '""') + '"';
  return s;
}

const instance = await DuckDBInstance.create(db);
const conn = await instance.connect();
let status = 0;
try {
  for (const sql of commands) {
    const stmts = await conn.extractStatements(sql);
    for (let i = 0; i < stmts.count; i++) {
      const prepared = await stmts.prepare(i);
      const reader = await prepared.runAndReadAll();
      const names = reader.columnNames();
      // Statements that return nothing report one column "Count" (rows
      // changed) or none; print only real results, as the CLI does for
      // queries.
      if (names.length === 0 || (names.length === 1 && names[0] === 'Count' && !/^\s*(select|from|with|values|show|describe|summarize|pragma|table)\b/i.test(sql))) continue;
      const out = [];
      if (header) out.push(names.map(field).join(sep));
      for (const row of reader.getRows()) out.push(row.map(field).join(sep));
      if (out.length) process.stdout.write(out.join('\n') + '\n');
    }
  }
} catch (e) {
  console.error(`Error: ${e.message}`);
  status = 1;
} finally {
  conn.closeSync?.();
  instance.closeSync?.();
}
process.exit(status);
