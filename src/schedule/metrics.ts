/**
 * Prometheus text metrics on 127.0.0.1:PORT/metrics (`schedule run --metrics-port N`).
 */
import * as http from 'node:http'
import type {AddressInfo} from 'node:net'
import {HolyshipError} from '../errors.js'

export interface TargetMetrics {
  target: string
  lastSuccessSeconds?: number
  lastFailureSeconds?: number
  lastDurationSeconds?: number
  lastBytes?: number
  lastNewBytes?: number
  runs: number
  failures: number
  overruns: number
  nextRunSeconds?: number
  running: boolean
}

const esc = (v: string): string => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')

export function renderMetrics(targets: TargetMetrics[], extra: {uncovered: number; startedSeconds: number}): string {
  const lines: string[] = []
  const metric = (name: string, type: 'gauge' | 'counter', help: string, get: (t: TargetMetrics) => number | undefined): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    for (const t of targets) {
      const v = get(t)
      if (v !== undefined) lines.push(`${name}{target="${esc(t.target)}"} ${v}`)
    }
  }
  metric('holyship_last_success_timestamp_seconds', 'gauge', 'When the last successful run of the target finished.', (t) => t.lastSuccessSeconds)
  metric('holyship_last_failure_timestamp_seconds', 'gauge', 'When the last failed run of the target finished.', (t) => t.lastFailureSeconds)
  metric('holyship_last_run_duration_seconds', 'gauge', 'How long the last run of the target took.', (t) => t.lastDurationSeconds)
  metric('holyship_last_snapshot_bytes', 'gauge', 'Bytes in the last snapshot of the target.', (t) => t.lastBytes)
  metric('holyship_last_snapshot_new_bytes', 'gauge', 'Bytes the last snapshot of the target added to the repository.', (t) => t.lastNewBytes)
  metric('holyship_runs_total', 'counter', 'Runs of the target since the scheduler started.', (t) => t.runs)
  metric('holyship_failures_total', 'counter', 'Failed runs of the target since the scheduler started.', (t) => t.failures)
  metric('holyship_overruns_total', 'counter', 'Runs skipped because the previous run of the target was still going.', (t) => t.overruns)
  metric('holyship_next_run_timestamp_seconds', 'gauge', 'When the target runs next.', (t) => t.nextRunSeconds)
  metric('holyship_running', 'gauge', '1 while a run of the target is in progress.', (t) => (t.running ? 1 : 0))
  lines.push('# HELP holyship_uncovered_mounts Volumes and bind mounts on the engine that no schedule covers.', '# TYPE holyship_uncovered_mounts gauge', `holyship_uncovered_mounts ${extra.uncovered}`)
  lines.push('# HELP holyship_scheduler_start_timestamp_seconds When the scheduler started.', '# TYPE holyship_scheduler_start_timestamp_seconds gauge', `holyship_scheduler_start_timestamp_seconds ${extra.startedSeconds}`)
  return lines.join('\n') + '\n'
}

export interface MetricsServer {
  port: number
  close(): Promise<void>
}

/** Listen on 127.0.0.1:port (0: any free port); `render` is called for every scrape. */
export async function startMetricsServer(port: number, render: () => string): Promise<MetricsServer> {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new HolyshipError('USAGE', `--metrics-port must be a port number (0-65535), not ${port}`)
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url !== '/metrics' && req.url !== '/')) {
      res.writeHead(404, {'content-type': 'text/plain'}).end('not found; try /metrics\n')
      return
    }
    let body: string
    try {
      body = render()
    } catch (e) {
      res.writeHead(500, {'content-type': 'text/plain'}).end(`${(e as Error).message}\n`)
      return
    }
    res.writeHead(200, {'content-type': 'text/plain; version=0.0.4; charset=utf-8'}).end(body)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(e.code === 'EADDRINUSE' ? new HolyshipError('USAGE', `--metrics-port ${port}: the port is in use on 127.0.0.1`) : e),
    )
    server.listen(port, '127.0.0.1', () => resolve())
  })
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections?.()
        server.close(() => resolve())
      }),
  }
}
