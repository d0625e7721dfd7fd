/**
 * A fault-injecting HTTP proxy for S3 tests: it sits between the S3 client and s3rver and, per
 * request, passes it through or injects a fault chosen by a plan function:
 *
 *   drop          the connection is cut before the request reaches the server
 *   drop-after    the server handles the request (a PUT is stored), the client gets no answer
 *   status500     500 InternalError (the request never reaches the server)
 *   status503     503 SlowDown
 *   slow          passed through after a delay (SLOW_MS)
 *   truncate      the answer's headers promise the whole body, half of it comes, then the
 *                 connection is cut (requests without a response body: like drop-after)
 *   truncate-lie  half the body with a Content-Length that says so (a lying middlebox: only
 *                 content hashes can tell); requests without a response body pass
 */
import * as http from 'node:http'
import type {AddressInfo} from 'node:net'

export type Fault = 'pass' | 'drop' | 'drop-after' | 'status500' | 'status503' | 'slow' | 'truncate' | 'truncate-lie'
export const FAULTS: readonly Fault[] = ['drop', 'drop-after', 'status500', 'status503', 'slow', 'truncate', 'truncate-lie']

export interface ProxiedRequest {
  method: string
  /** the object key part of the path (path-style: /bucket/key) */
  path: string
  /** how many requests came before this one */
  n: number
}

export type FaultPlan = (r: ProxiedRequest) => Fault

export interface FaultProxy {
  endpoint: string
  /** every request seen, with the fault it got */
  log: {method: string; path: string; fault: Fault}[]
  setPlan(plan: FaultPlan): void
  stop(): Promise<void>
}

export const SLOW_MS = 400

/** mulberry32: a small seeded PRNG, so a failing run can be replayed */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** the faults a client can always get past by trying again (not truncate-lie: only a content hash tells) */
export const RECOVERABLE: readonly Fault[] = ['drop', 'drop-after', 'status500', 'status503', 'slow', 'truncate']

/**
 * Every `every`-th request of each method gets the next fault of `faults`, in turn: each kind
 * is met by uploads and downloads alike, deterministically.
 */
export function rotatingFaults(every: number, faults: readonly Fault[] = RECOVERABLE): FaultPlan {
  const seen = new Map<string, number>()
  const next = new Map<string, number>()
  return (r) => {
    const n = (seen.get(r.method) ?? 0) + 1
    seen.set(r.method, n)
    if (n % every !== 0) return 'pass'
    const k = next.get(r.method) ?? 0
    next.set(r.method, k + 1)
    return faults[k % faults.length]
  }
}

/** a plan that injects one of `faults` into a `rate` share of the requests */
export function randomFaults(seed: number, rate: number, faults: readonly Fault[] = FAULTS): FaultPlan {
  const rnd = prng(seed)
  return () => (rnd() < rate ? faults[Math.floor(rnd() * faults.length)] : 'pass')
}

function s3Error(res: http.ServerResponse, status: number, code: string): void {
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>injected by the test proxy</Message><RequestId>fault</RequestId></Error>`
  res.writeHead(status, {'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(body)})
  res.end(body)
}

export async function startFaultProxy(target: string): Promise<FaultProxy> {
  const up = new URL(target)
  let plan: FaultPlan = () => 'pass'
  let n = 0
  const log: FaultProxy['log'] = []
  const sockets = new Set<import('node:net').Socket>()

  const forward = (req: http.IncomingMessage, body: Buffer): Promise<{status: number; headers: http.IncomingHttpHeaders; body: Buffer}> =>
    new Promise((resolve, reject) => {
      const r = http.request(
        {host: up.hostname, port: Number(up.port), method: req.method, path: req.url, headers: {...req.headers, host: up.host}},
        (res) => {
          const parts: Buffer[] = []
          res.on('data', (d: Buffer) => parts.push(d))
          res.on('end', () => resolve({status: res.statusCode ?? 502, headers: res.headers, body: Buffer.concat(parts)}))
          res.on('error', reject)
        },
      )
      r.on('error', reject)
      r.end(body)
    })

  const server = http.createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0]
    const fault = plan({method: req.method ?? 'GET', path, n: n++})
    log.push({method: req.method ?? 'GET', path, fault})
    if (fault === 'drop') {
      req.socket.destroy()
      return
    }
    const parts: Buffer[] = []
    req.on('data', (d: Buffer) => parts.push(d))
    req.on('error', () => undefined)
    req.on('end', () => {
      void (async () => {
        if (fault === 'status500') return s3Error(res, 500, 'InternalError')
        if (fault === 'status503') return s3Error(res, 503, 'SlowDown')
        if (fault === 'slow') await new Promise((r) => setTimeout(r, SLOW_MS))
        let answer
        try {
          answer = await forward(req, Buffer.concat(parts))
        } catch {
          req.socket.destroy()
          return
        }
        const hasBody = answer.body.length > 1 && req.method === 'GET' && answer.status < 300
        if (fault === 'drop-after' || (fault === 'truncate' && !hasBody)) {
          req.socket.destroy()
          return
        }
        const headers = {...answer.headers}
        delete headers['transfer-encoding']
        delete headers.connection
        if (fault === 'truncate') {
          res.writeHead(answer.status, {...headers, 'content-length': String(answer.body.length)})
          res.write(answer.body.subarray(0, Math.floor(answer.body.length / 2)), () => setTimeout(() => req.socket.destroy(), 10))
          return
        }
        if (fault === 'truncate-lie' && hasBody) {
          const half = answer.body.subarray(0, Math.floor(answer.body.length / 2))
          // a short answer to a range request still says which bytes it is
          if (headers['content-range']) {
            const m = /^bytes (\d+)-(\d+)\/(\S+)$/.exec(String(headers['content-range']))
            if (m) headers['content-range'] = `bytes ${m[1]}-${Number(m[1]) + half.length - 1}/${m[3]}`
          }
          res.writeHead(answer.status, {...headers, 'content-length': String(half.length)})
          res.end(half)
          return
        }
        // a HEAD answer has no body but says how long the object is: keep its Content-Length
        if (req.method !== 'HEAD') headers['content-length'] = String(answer.body.length)
        res.writeHead(answer.status, headers)
        res.end(answer.body)
      })().catch(() => req.socket.destroy())
    })
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    endpoint: `http://127.0.0.1:${port}`,
    log,
    setPlan(p) {
      plan = p
    },
    async stop() {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
