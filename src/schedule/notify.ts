/**
 * Notifications: a JSON POST to a webhook after a failed run (and, if asked, after every
 * successful one). A webhook that is down never fails a run: the error is returned.
 */
import * as os from 'node:os'

export interface RunNotification {
  event: 'failure' | 'success'
  /** `container:NAME`, `volume:NAME`, `repository:prune` */
  target: string
  container?: string
  volume?: string
  host: string
  time: string
  snapshot?: string
  bytes?: number
  newBytes?: number
  durationMs: number
  error?: string
  /** what else happened: hook output tail, retention, shipping */
  details?: Record<string, unknown>
}

export function notification(n: Omit<RunNotification, 'host' | 'time'>): RunNotification {
  return {...n, host: os.hostname(), time: new Date().toISOString()}
}

/** POST the notification; resolves with an error message instead of throwing */
export async function postWebhook(url: string, body: RunNotification, timeoutMs = 10_000): Promise<string | undefined> {
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: {'content-type': 'application/json', 'user-agent': 'holyship-scheduler'},
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    })
    await res.arrayBuffer().catch(() => undefined)
    if (!res.ok) return `webhook answered ${res.status} ${res.statusText}`
    return undefined
  } catch (e) {
    const err = e as Error & {cause?: {code?: string; message?: string}}
    return `webhook failed: ${err.cause?.code ?? err.cause?.message ?? err.message}`
  }
}
