import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {formatBytes} from '../src/progress.js'
import {openEngine} from '../src/services/context.js'
import {withLockedContext} from '../src/services/locking.js'
import {snapshot, SnapshotResult, snapshotWarnings} from '../src/services/snapshot.js'

export default class Snapshot extends BaseCommand<typeof Snapshot> {
  static override description = 'Snapshot containers (config, image, filesystem diff, volumes and bind mounts) or standalone volumes'
  static override strict = false
  static override args = {container: Args.string({description: 'container name or id (several allowed)'})}
  static override flags = {
    volume: Flags.string({description: 'snapshot a standalone named volume (repeatable)', multiple: true, default: []}),
    tag: Flags.string({description: 'tag the snapshot (repeatable)', multiple: true, default: []}),
    'no-pause': Flags.boolean({description: 'read the container live instead of pausing it', exclusive: ['stop']}),
    stop: Flags.boolean({description: 'stop the container while reading, then start it again', exclusive: ['no-pause']}),
    reader: Flags.string({
      description: 'how to read data: direct from the engine host\'s disk, or through the Docker API',
      options: ['auto', 'api', 'direct'],
      default: 'auto',
      env: 'HOLYSHIP_READER',
    }),
    'docker-host': Flags.string({description: 'Docker engine (default: DOCKER_HOST)'}),
  }

  async run(): Promise<SnapshotResult[]> {
    const {argv} = await this.parse(Snapshot)
    const f = this.flags
    // a shared lock: snapshots run side by side, a prune waits for them (and they for it)
    return withLockedContext({repo: f.repo, catalogue: f.catalogue, exclusive: false, purpose: 'snapshot', waitMs: 60_000}, async (ctx, lock) => {
      const results = await snapshot({
        repo: ctx.repo,
        catalogue: ctx.catalogue,
        engine: await openEngine({dockerHost: f['docker-host']}),
        lock,
        containers: argv as string[],
        volumes: f.volume,
        tags: f.tag,
        consistency: f.stop ? 'stop' : f['no-pause'] ? 'live' : 'pause',
        reader: f.reader as 'auto' | 'api' | 'direct',
        progress: this.progress(),
      })
      for (const r of results) {
        this.say(`snapshot ${r.id.slice(0, 12)} of ${r.kind} ${r.name}: ${r.files} files, ${formatBytes(r.bytes)}, ${formatBytes(r.newBytes)} new, ${(r.durationMs / 1000).toFixed(1)}s`)
        for (const w of snapshotWarnings(r)) this.warn(w)
      }
      return results
    })
  }
}
