/** POSIX shell single-quoting: the word arrives literally, whatever it contains (no NUL: argv cannot hold one). */
export function shQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}
