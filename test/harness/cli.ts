import {spawn} from 'node:child_process'
import {fileURLToPath} from 'node:url'

export interface CliResult {
  code: number
  stdout: string
  stderr: string
}

const BIN = fileURLToPath(new URL('../../bin/run.js', import.meta.url))

/**
 * Run the built `holyship` binary (npm run build first) with extra environment; `prefix`: a
 * command it runs under (e.g. setpriv dropping a capability).
 */
export function holyship(args: string[], env: Record<string, string | undefined> = {}, input?: string, prefix: string[] = []): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const argv = [...prefix, process.execPath, BIN, ...args]
    const child = spawn(argv[0], argv.slice(1), {env: {...process.env, ...env}, stdio: ['pipe', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({code: code ?? -1, stdout, stderr}))
    child.stdin.end(input ?? '')
  })
}
