/**
 * Restores through the service (with the catalogue, as the CLI calls it) that the engine
 * refuses once they have removed what they replace: for the tests of what a failed
 * `restore --force` puts back.
 */
import {LocalBackend} from '../../src/backend/local.js'
import {Catalogue} from '../../src/catalogue/catalogue.js'
import {Engine} from '../../src/docker/engine.js'
import type {ContainerRecord} from '../../src/repo/format.js'
import {Repository} from '../../src/repo/repository.js'
import {restore} from '../../src/services/restore.js'

/** how the restored container is made to fail: `cpu`, at create (the snapshot's host had 64 cores; CPU 63 is refused here); `cmd`, at start, once its mounts are filled (no such command) */
export type Failure = 'cpu' | 'cmd'

/**
 * restore --force (and --start) of the latest snapshot of `name` in the repository and
 * catalogue of `env`, on the engine at `dockerHost`, made to fail as `how` says. Its error.
 */
export async function failingRestore(env: Record<string, string>, dockerHost: string, name: string, how: Failure = 'cpu'): Promise<Error | undefined> {
  const repo = await Repository.open(new LocalBackend(env.HOLYSHIP_REPO))
  const catalogue = Catalogue.open(env.HOLYSHIP_CATALOGUE)
  repo.treeCache = catalogue
  try {
    const id = catalogue.resolveSnapshot(repo.id, `latest:${name}`)
    const m = catalogue.getManifest(repo.id, id)!
    const c: ContainerRecord = m.container!
    const container = how === 'cpu' ? {...c, hostConfig: {...c.hostConfig, CpusetCpus: '63'}} : {...c, config: {...c.config, Cmd: ['/no/such/command']}}
    return await restore({repo, engine: new Engine(dockerHost), snapshotId: id, manifest: {...m, container}, force: true, start: how === 'cmd', catalogue}).then(
      () => undefined,
      (e: Error) => e,
    )
  } finally {
    catalogue.close()
  }
}
