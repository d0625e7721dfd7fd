/**
 * A volume that holds a device node, restored by a holyship that may not make device nodes
 * (root without CAP_MKNOD, as in a container started with --cap-drop): the volume is written
 * straight into its directory, the node is left out, and the restore says so; the rest of the
 * volume is there and the container is made. With the capability, the node comes back.
 */
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {holyship} from '../harness/cli.js'
import {connectEngine, dockerExec} from '../harness/engine.js'

/** CAP_MKNOD dropped from the CLI's bounding and inheritable sets */
const WITHOUT_MKNOD = ['setpriv', '--bounding-set=-mknod', '--inh-caps=-mknod']

describe('device nodes in a volume', () => {
  const {docker, dockerHost} = connectEngine(inject('holyshipEngineA'))
  const tag = process.pid.toString(36)
  const app = `dev-${tag}`
  const vol = `devdata-${tag}`
  let work: string
  let env: Record<string, string>
  let snapshotId: string

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-dev-'))
    env = {DOCKER_HOST: dockerHost, HOLYSHIP_REPO: path.join(work, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3')}
    await docker.createVolume({Name: vol})
    const c = await docker.createContainer({name: app, Image: inject('holyshipBusyboxImage'), Cmd: ['sleep', '100000'], HostConfig: {Binds: [`${vol}:/data`]}})
    await c.start()
    expect((await dockerExec(docker, c.id, ['sh', '-c', 'mknod /data/null c 1 3 && echo hi > /data/f'])).exitCode).toBe(0)
    expect((await holyship(['init'], env)).code).toBe(0)
    const s = await holyship(['snapshot', app, '--json'], env)
    expect(s.code).toBe(0)
    snapshotId = JSON.parse(s.stdout)[0].id
  }, 120_000)

  afterAll(async () => {
    for (const n of [app, `${app}-nocap`, `${app}-cap`]) await docker.getContainer(n).remove({force: true}).catch(() => {})
    for (const v of [vol, `nocap-${vol}`, `cap-${vol}`]) await docker.getVolume(v).remove().catch(() => {})
    rmSync(work, {recursive: true, force: true})
  })

  const volumeDir = async (name: string): Promise<string> => (await docker.getVolume(name).inspect()).Mountpoint

  it('without CAP_MKNOD: the node is left out with a warning naming the volume, the rest is restored', async () => {
    const r = await holyship(['restore', snapshotId, '--name', `${app}-nocap`, '--volume-prefix', 'nocap-'], env, undefined, WITHOUT_MKNOD)
    expect(r.code).toBe(0)
    expect(r.stderr).toMatch(new RegExp(`volume ${vol}: 1 device node not made \\(mknod needs root with CAP_MKNOD\\): /null`))
    const dir = await volumeDir(`nocap-${vol}`)
    expect((await fsp.readdir(dir)).sort()).toEqual(['f'])
    expect(await fsp.readFile(path.join(dir, 'f'), 'utf8')).toBe('hi\n')
    expect((await docker.getContainer(`${app}-nocap`).inspect()).Mounts.map((m) => m.Name)).toEqual([`nocap-${vol}`])
  })

  it('with it: the node comes back, and nothing is said', async () => {
    const r = await holyship(['restore', snapshotId, '--name', `${app}-cap`, '--volume-prefix', 'cap-'], env)
    expect(r.code).toBe(0)
    expect(r.stderr).toBe('')
    const st = await fsp.lstat(path.join(await volumeDir(`cap-${vol}`), 'null'))
    expect([st.isCharacterDevice(), st.rdev]).toEqual([true, (1 << 8) | 3])
  })
})
