/**
 * pre/post hooks: a command run inside the container with `docker exec` (`sh -c CMD`), its
 * output passed on line by line, its exit code returned.
 */
import {PassThrough} from 'node:stream'
import {Engine} from '../docker/engine.js'
import {HolyshipError} from '../errors.js'

export interface HookResult {
  exitCode: number
  /** the last 64 KiB of stdout and stderr, interleaved */
  output: string
  durationMs: number
}

const KEEP_OUTPUT = 64 * 1024

export async function runHook(
  engine: Engine,
  containerId: string,
  command: string,
  opts: {timeoutMs?: number; onLine?: (line: string, stream: 'stdout' | 'stderr') => void} = {},
): Promise<HookResult> {
  const t0 = Date.now()
  const docker = engine.docker
  let output = ''
  const sink = (stream: 'stdout' | 'stderr'): PassThrough => {
    const p = new PassThrough()
    let partial = ''
    p.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8')
      output = (output + text).slice(-KEEP_OUTPUT)
      const lines = (partial + text).split('\n')
      partial = lines.pop() ?? ''
      for (const l of lines) opts.onLine?.(l, stream)
    })
    p.on('end', () => {
      if (partial) opts.onLine?.(partial, stream)
    })
    return p
  }
  let exec
  try {
    exec = await docker.getContainer(containerId).exec({Cmd: ['sh', '-c', command], AttachStdout: true, AttachStderr: true, AttachStdin: false, Tty: false})
  } catch (e) {
    throw engine.mapError(`exec in ${containerId.slice(0, 12)}`, e)
  }
  const stream = await exec.start({hijack: true, stdin: false}).catch((e: unknown) => {
    throw engine.mapError(`exec start in ${containerId.slice(0, 12)}`, e)
  })
  const out = sink('stdout')
  const err = sink('stderr')
  docker.modem.demuxStream(stream, out, err)
  const timeoutMs = opts.timeoutMs ?? 3_600_000
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([
      new Promise<void>((resolve, reject) => {
        stream.on('end', resolve)
        stream.on('close', resolve)
        stream.on('error', reject)
      }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new HolyshipError('DOCKER_FAILED', `hook did not finish within ${Math.round(timeoutMs / 1000)}s: ${command}`)), timeoutMs)
      }),
    ])
  } catch (e) {
    stream.destroy()
    throw e
  } finally {
    if (timer) clearTimeout(timer)
    out.end()
    err.end()
  }
  // the stream can end a moment before the engine records the exit code
  for (let i = 0; ; i++) {
    const info = await exec.inspect()
    if (!info.Running && info.ExitCode !== null && info.ExitCode !== undefined) {
      return {exitCode: info.ExitCode, output, durationMs: Date.now() - t0}
    }
    if (i >= 50) throw new HolyshipError('DOCKER_FAILED', `hook output ended but the engine reports it still running: ${command}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}
