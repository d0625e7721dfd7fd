import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {keepReplacedFlag} from '../src/cli/restore-flags.js'
import {transferFlags, transferOptions} from '../src/cli/remote-flags.js'
import {formatBytes} from '../src/progress.js'
import {LandResult, land} from '../src/services/remote.js'
import {describeRestore, restoreWarnings} from '../src/services/restore.js'

export default class Land extends BaseCommand<typeof Land> {
  static override description = 'Pull a snapshot from an S3 remote and restore it (creates the local repository on a new host)'
  static override examples = ['<%= config.bin %> land latest:web --from backup --start']
  static override args = {snapshot: Args.string({description: 'id, unique id prefix, latest, or latest:NAME on the remote', required: true})}
  static override flags = {
    from: Flags.string({description: 'remote name or s3://BUCKET[/PREFIX]', required: true}),
    name: Flags.string({description: 'name of the restored container (or volume, for a one-volume snapshot)'}),
    'volume-prefix': Flags.string({description: 'restore volumes under PREFIX+name'}),
    start: Flags.boolean({description: 'start the restored container'}),
    force: Flags.boolean({description: 'replace an existing container or volume'}),
    'keep-replaced': keepReplacedFlag,
    'docker-host': Flags.string({description: 'Docker engine (default: DOCKER_HOST)'}),
    ...transferFlags,
  }

  async run(): Promise<LandResult> {
    const f = this.flags
    const r = await land({
      ...transferOptions(f, f.from),
      snapshot: this.args.snapshot,
      name: f.name,
      volumePrefix: f['volume-prefix'],
      start: f.start,
      force: f.force,
      keepReplaced: f['keep-replaced'],
      dockerHost: f['docker-host'],
      progress: this.progress(),
    })
    const p = r.pull
    this.say(`pulled snapshot ${p.snapshots[0].slice(0, 12)} from ${p.remote}: ${p.packsReceived} packs (${formatBytes(p.bytesReceived)}) received, ${p.packsSkipped} already here`)
    for (const line of describeRestore(r.restore)) this.say(line)
    for (const w of restoreWarnings(r.restore)) this.warn(w)
    return r
  }
}
