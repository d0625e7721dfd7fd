/**
 * The main job, end to end, on private engines (never the machine's own Docker):
 * a container with data on host A is snapshotted, destroyed and restored; its data is shown
 * back. Run with `npm run demo`.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {fileURLToPath} from 'node:url'
import {dockerExec, startEngine, stopAllEngines, type Engine} from '../test/harness/engine.js'
import {BUSYBOX_IMAGE, importBusybox} from '../test/harness/images.js'

const BIN = fileURLToPath(new URL('../bin/run.js', import.meta.url))

function step(title: string): void {
  process.stdout.write(`\n\x1b[1m== ${title}\x1b[0m\n`)
}

function hs(env: NodeJS.ProcessEnv, ...args: string[]): string {
  process.stdout.write(`$ holyship ${args.join(' ')}\n`)
  const r = spawnSync(process.execPath, [BIN, ...args], {env, encoding: 'utf8'})
  process.stdout.write(r.stdout)
  process.stderr.write(r.stderr)
  if (r.status !== 0) throw new Error(`holyship ${args.join(' ')} exited ${r.status}`)
  return r.stdout
}

async function show(engine: Engine, container: string, cmd: string): Promise<string> {
  process.stdout.write(`$ docker exec ${container} sh -c '${cmd}'\n`)
  const r = await dockerExec(engine.docker, container, ['sh', '-c', cmd])
  process.stdout.write(r.stdout + r.stderr)
  return r.stdout
}

async function main(): Promise<void> {
  const work = mkdtempSync(path.join(os.tmpdir(), 'holyship-demo-'))
  const envA: NodeJS.ProcessEnv = {...process.env, HOLYSHIP_REPO: path.join(work, 'a/repo'), HOLYSHIP_CATALOGUE: path.join(work, 'a/catalogue.sqlite3')}
  try {
    step('starting a private Docker engine (host A)')
    const a = await startEngine('a')
    envA.DOCKER_HOST = a.dockerHost
    await importBusybox(a)

    step('a container with state: a volume, a changed file, an added file, a deleted file')
    await a.docker.createVolume({Name: 'appdata'})
    const c = await a.docker.createContainer({
      name: 'intranet',
      Image: BUSYBOX_IMAGE,
      Cmd: ['sh', '-c', 'while true; do date >> /data/visits.log; sleep 1; done'],
      Env: ['APP_MODE=production'],
      Labels: {'com.example.owner': 'ops'},
      HostConfig: {Binds: ['appdata:/data'], RestartPolicy: {Name: 'unless-stopped', MaximumRetryCount: 0}},
    })
    await c.start()
    await dockerExec(a.docker, c.id, [
      'sh',
      '-c',
      'echo "the wiki database" > /data/db.txt; dd if=/dev/urandom of=/data/blob.bin bs=1M count=8 2>/dev/null; echo "tuned=yes" >> /etc/passwd; mkdir -p /opt/app && echo v2 > /opt/app/VERSION; rm /bin/vi',
    ])
    const before = await show(a, 'intranet', 'cat /data/db.txt /opt/app/VERSION; md5sum /data/blob.bin; tail -1 /etc/passwd; ls /bin/vi 2>&1')

    step('snapshot it (paused while read, so it is one point in time)')
    hs(envA, 'init')
    hs(envA, 'snapshot', 'intranet', '--tag', 'demo')
    hs(envA, 'list')
    hs(envA, 'show', 'latest:intranet')

    step('destroy the container and its volume')
    await a.docker.getContainer('intranet').remove({force: true})
    await a.docker.getVolume('appdata').remove()
    process.stdout.write('container intranet and volume appdata removed\n')

    step('restore it and start it again')
    hs(envA, 'restore', 'latest:intranet', '--start')
    const after = await show(a, 'intranet', 'cat /data/db.txt /opt/app/VERSION; md5sum /data/blob.bin; tail -1 /etc/passwd; ls /bin/vi 2>&1')
    hs(envA, 'verify', '--read-data')

    const same = before.trim() === after.trim()
    step(same ? 'the restored container has the same data: nothing lost' : 'MISMATCH: restored data differs')
    if (!same) process.exitCode = 1
  } finally {
    await stopAllEngines()
    rmSync(work, {recursive: true, force: true})
  }
}

main().catch(async (e) => {
  process.stderr.write(`demo failed: ${(e as Error).message}\n`)
  await stopAllEngines().catch(() => {})
  process.exit(1)
})
