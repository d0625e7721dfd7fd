import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {transferFlags, transferOptions} from '../src/cli/remote-flags.js'
import {formatBytes} from '../src/progress.js'
import {ShipResult, ship} from '../src/services/remote.js'
import {snapshotWarnings} from '../src/services/snapshot.js'

export default class Ship extends BaseCommand<typeof Ship> {
  static override description = 'Snapshot containers (or --volume volumes) and push the new snapshots to an S3 remote'
  static override examples = ['<%= config.bin %> ship web db --to backup']
  static override strict = false
  static override args = {container: Args.string({description: 'container name or id (several allowed)'})}
  static override flags = {
    to: Flags.string({description: 'remote name or s3://BUCKET[/PREFIX]', required: true}),
    volume: Flags.string({description: 'snapshot a standalone named volume (repeatable)', multiple: true, default: []}),
    tag: Flags.string({description: 'tag the snapshot (repeatable)', multiple: true, default: []}),
    'no-pause': Flags.boolean({description: 'read the container live instead of pausing it', exclusive: ['stop']}),
    stop: Flags.boolean({description: 'stop the container while reading, then start it again', exclusive: ['no-pause']}),
    reader: Flags.string({
      description: "how to read data: direct from the engine host's disk, or through the Docker API",
      options: ['auto', 'api', 'direct'],
      default: 'auto',
      env: 'HOLYSHIP_READER',
    }),
    'docker-host': Flags.string({description: 'Docker engine (default: DOCKER_HOST)'}),
    ...transferFlags,
  }

  async run(): Promise<ShipResult> {
    const {argv} = await this.parse(Ship)
    const f = this.flags
    const r = await ship({
      ...transferOptions(f, f.to),
      containers: argv as string[],
      volumes: f.volume,
      tags: f.tag,
      consistency: f.stop ? 'stop' : f['no-pause'] ? 'live' : 'pause',
      reader: f.reader as 'auto' | 'api' | 'direct',
      dockerHost: f['docker-host'],
      progress: this.progress(),
    })
    for (const s of r.snapshots) {
      this.say(`snapshot ${s.id.slice(0, 12)} of ${s.kind} ${s.name}: ${s.files} files, ${formatBytes(s.bytes)}`)
      for (const w of snapshotWarnings(s)) this.warn(w)
    }
    const p = r.push
    this.say(`shipped to ${p.remote}: ${p.packsSent} packs (${formatBytes(p.bytesSent)}) sent, ${p.packsSkipped} packs (${formatBytes(p.bytesSkipped)}) already there`)
    return r
  }
}
