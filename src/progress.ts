/**
 * Progress for long work: bytes, rate and ETA on a TTY (stderr), nothing in pipes or with
 * --json. Domain code reports through this small interface and knows nothing of terminals.
 */
export interface Progress {
  /** start a phase; `total` in bytes when known */
  phase(name: string, total?: number): void
  add(bytes: number): void
  /** a line for the user (stderr on a TTY, debug otherwise) */
  note(message: string): void
  /** optional: a short status shown after the numbers, e.g. `12 packs left` */
  detail?(text: string): void
  done(): void
}

export const silentProgress: Progress = {
  phase() {},
  add() {},
  note() {},
  done() {},
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`
}

function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?'
  if (s < 60) return `${Math.round(s)}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`
}

/** A one-line progress display redrawn at most 5 times a second on a TTY stream. */
export class TtyProgress implements Progress {
  private name = ''
  private total?: number
  private bytes = 0
  private started = Date.now()
  private last = 0
  private extra = ''

  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {}

  static forStream(out: NodeJS.WriteStream, enabled: boolean): Progress {
    return enabled && out.isTTY ? new TtyProgress(out) : silentProgress
  }

  phase(name: string, total?: number): void {
    this.clear()
    this.name = name
    this.total = total
    this.bytes = 0
    this.started = Date.now()
    this.last = 0
    this.extra = ''
    this.render(true)
  }

  detail(text: string): void {
    this.extra = text
    this.render(false)
  }

  add(bytes: number): void {
    this.bytes += bytes
    this.render(false)
  }

  note(message: string): void {
    this.clear()
    this.out.write(message + '\n')
    this.render(true)
  }

  done(): void {
    this.clear()
  }

  private clear(): void {
    this.out.write('\r\x1b[2K')
  }

  private render(force: boolean): void {
    const now = Date.now()
    if (!force && now - this.last < 200) return
    this.last = now
    const secs = Math.max(0.001, (now - this.started) / 1000)
    const rate = this.bytes / secs
    let line = `${this.name}: ${formatBytes(this.bytes)}`
    if (this.total) {
      const pct = Math.min(100, (100 * this.bytes) / this.total)
      line += ` / ${formatBytes(this.total)} (${pct.toFixed(0)}%)`
    }
    line += ` ${formatBytes(rate)}/s`
    if (this.total && rate > 0) line += ` ETA ${formatDuration((this.total - this.bytes) / rate)}`
    if (this.extra) line += `, ${this.extra}`
    this.out.write('\r\x1b[2K' + line.slice(0, (this.out.columns || 100) - 1))
  }
}
