"use strict";
/**
 * Jest reporter: a per-suite time table at the end of `npm test`, slowest first, so the suite's
 * budget (CI stops at 90 min) stays visible. Times are each suite's own wall time; suites run in
 * parallel workers (jest.config.js: two), so their sum exceeds the run's wall time.
 */
class SuiteTimes {
  onRunComplete(_contexts, results) {
    const rows = results.testResults
      .map((r) => ({ file: require("node:path").relative(process.cwd(), r.testFilePath), s: (r.perfStats.end - r.perfStats.start) / 1000, tests: r.numPassingTests + r.numFailingTests + r.numPendingTests, failed: r.numFailingTests + (r.testExecError ? 1 : 0) }))
      .sort((a, b) => b.s - a.s);
    if (!rows.length) return;
    const wall = (Date.now() - results.startTime) / 1000;
    const sum = rows.reduce((t, r) => t + r.s, 0);
    const w = Math.max(5, ...rows.map((r) => r.file.length));
    const line = (a, b, c, d) => `| ${a.padEnd(w)} | ${b.padStart(9)} | ${c.padStart(5)} | ${d.padStart(6)} |`;
    const out = ["", "Per-suite time (slowest first)", line("suite", "time", "tests", "failed"), `|${"-".repeat(w + 2)}|${"-".repeat(10)}:|${"-".repeat(6)}:|${"-".repeat(7)}:|`];
    for (const r of rows) out.push(line(r.file, `${r.s.toFixed(1)} s`, String(r.tests), String(r.failed)));
    out.push(line(`${rows.length} suites: sum of suite times`, `${sum.toFixed(0)} s`, String(rows.reduce((t, r) => t + r.tests, 0)), String(rows.reduce((t, r) => t + r.failed, 0))));
    out.push(line("wall time of the run", `${wall.toFixed(0)} s`, "", ""));
    process.stderr.write(out.join("\n") + "\n");
  }
}
module.exports = SuiteTimes;
