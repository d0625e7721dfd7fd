/**
 * The main job, end to end, on private engines (never the machine's own Docker):
 * a container with data on host A is snapshotted, destroyed and restored; its data is shown
 * back. Then the mission: it is shipped through S3 (a local s3rver) and landed on host B, a
 * second engine with no images, no repository and no catalogue, where it runs with the same
 * data. Run with `npm run demo`.
 */
import {spawn} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {fileURLToPath} from 'node:url'
import {dockerExec, startEngine, stopAllEngines, type Engine} from '../test/harness/engine.js'
import {BUSYBOX_IMAGE, importBusybox} from '../test/harness/images.js'
import {S3RVER_CREDENTIALS, startS3Server, type S3Server} from '../test/harness/s3.js'

const BIN = fileURLToPath(new URL('../bin/run.js', import.meta.url))

function step(title: string): void {
  process.stdout.write(`\n\x1b[1m== ${title}\x1b[0m\n`)
}

/** run the CLI; asynchronously, because the demo's own event loop serves the S3 endpoint */
async function hs(env: NodeJS.ProcessEnv, ...args: string[]): Promise<string> {
  process.stdout.write(`$ holyship ${args.join(' ')}\n`)
  const child = spawn(process.execPath, [BIN, ...args], {env, stdio: ['ignore', 'pipe', 'inherit']})
  let out = ''
  child.stdout.on('data', (d: Buffer) => {
    out += d
    process.stdout.write(d)
  })
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  if (code !== 0) throw new Error(`holyship ${args.join(' ')} exited ${code}`)
  return out
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
  let s3: S3Server | undefined
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
    await hs(envA, 'init')
    await hs(envA, 'snapshot', 'intranet', '--tag', 'demo')
    await hs(envA, 'list')
    await hs(envA, 'show', 'latest:intranet')

    step('destroy the container and its volume')
    await a.docker.getContainer('intranet').remove({force: true})
    await a.docker.getVolume('appdata').remove()
    process.stdout.write('container intranet and volume appdata removed\n')

    step('restore it and start it again')
    await hs(envA, 'restore', 'latest:intranet', '--start')
    const after = await show(a, 'intranet', 'cat /data/db.txt /opt/app/VERSION; md5sum /data/blob.bin; tail -1 /etc/passwd; ls /bin/vi 2>&1')
    await hs(envA, 'verify', '--read-data')

    const same = before.trim() === after.trim()
    step(same ? 'the restored container has the same data: nothing lost' : 'MISMATCH: restored data differs')
    if (!same) process.exitCode = 1

    step('the mission: ship it through S3 and land it on host B, a brand-new engine')
    s3 = await startS3Server('fleet')
    const b = await startEngine('b')
    const s3env = {
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_REGION: 'us-east-1',
    }
    Object.assign(envA, s3env, {HOLYSHIP_REMOTES: path.join(work, 'a/remotes.json')})
    const envB: NodeJS.ProcessEnv = {
      ...process.env,
      ...s3env,
      DOCKER_HOST: b.dockerHost,
      HOLYSHIP_REPO: path.join(work, 'b/repo'),
      HOLYSHIP_CATALOGUE: path.join(work, 'b/catalogue.sqlite3'),
      HOLYSHIP_REMOTES: path.join(work, 'b/remotes.json'),
    }
    process.stdout.write(`(s3rver at ${s3.endpoint}; host B has ${(await b.docker.listImages()).length} images)\n`)
    await hs(envA, 'remote', 'add', 'fleet', `s3://${s3.bucket}/prod`, '--endpoint', s3.endpoint)
    await hs(envA, 'ship', 'intranet', '--to', 'fleet')
    await dockerExec(a.docker, 'intranet', ['sh', '-c', 'echo "one more page" >> /data/db.txt'])
    await hs(envA, 'ship', 'intranet', '--to', 'fleet')
    const onA = await show(a, 'intranet', 'cat /data/db.txt /opt/app/VERSION; md5sum /data/blob.bin; ls /bin/vi 2>&1')
    await hs(envB, 'remote', 'add', 'fleet', `s3://${s3.bucket}/prod`, '--endpoint', s3.endpoint)
    await hs(envB, 'list', '--remote', 'fleet')
    await hs(envB, 'land', 'latest:intranet', '--from', 'fleet', '--start')
    const onB = await show(b, 'intranet', 'cat /data/db.txt /opt/app/VERSION; md5sum /data/blob.bin; ls /bin/vi 2>&1')
    const landed = onA.trim() === onB.trim()
    step(landed ? 'host B runs the same container with the same data: nothing lost' : 'MISMATCH: host B differs from host A')
    if (!landed) process.exitCode = 1
  } finally {
    await s3?.stop().catch(() => {})
    await stopAllEngines()
    rmSync(work, {recursive: true, force: true})
  }
}

main().catch(async (e) => {
  process.stderr.write(`demo failed: ${(e as Error).message}\n`)
  await stopAllEngines().catch(() => {})
  process.exit(1)
})
