import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {transferFlags, transferOptions} from '../src/cli/remote-flags.js'
import {formatBytes} from '../src/progress.js'
import {PullResult, pull} from '../src/services/remote.js'

export default class Pull extends BaseCommand<typeof Pull> {
  static override description = "Fetch snapshots from an S3 remote; only the packs the local repository lacks travel. Without snapshots: only the remote's snapshot list"
  static override examples = ['<%= config.bin %> pull --from backup', '<%= config.bin %> pull latest:web --from backup']
  static override strict = false
  static override args = {snapshot: Args.string({description: 'id, unique id prefix, latest, or latest:NAME on the remote (several allowed)'})}
  static override flags = {
    from: Flags.string({description: 'remote name or s3://BUCKET[/PREFIX]', required: true}),
    ...transferFlags,
  }

  async run(): Promise<PullResult> {
    const {argv} = await this.parse(Pull)
    const f = this.flags
    const r = await pull({
      ...transferOptions(f, f.from),
      snapshots: argv as string[],
      progress: this.progress(),
    })
    if (r.remoteSnapshots) {
      this.say(`${r.remote}: ${r.remoteSnapshots.length} snapshot(s)`)
      for (const s of r.remoteSnapshots) {
        this.say(`${s.id.slice(0, 12)} ${s.time.slice(0, 19).replace('T', ' ')} ${s.host.slice(0, 12).padEnd(12)} ${s.kind.padEnd(9)} ${s.name.slice(0, 20).padEnd(20)} ${formatBytes(s.bytes)}`)
      }
      return r
    }
    if (r.createdRepository) this.say(`created local repository ${r.remoteRepository.slice(0, 12)} from ${r.remote}`)
    if (r.sameRepository === false) this.warn(`the local repository is not ${r.remote}'s; data still dedups by content hash`)
    this.say(
      `pulled ${r.snapshotsPulled.length} snapshot(s) from ${r.remote}: ${r.packsReceived} packs (${formatBytes(r.bytesReceived)}) received, ` +
        `${r.packsSkipped} packs (${formatBytes(r.bytesSkipped)}) already here` +
        (r.snapshotsSkipped.length ? `; ${r.snapshotsSkipped.length} snapshot(s) were already here` : ''),
    )
    return r
  }
}
