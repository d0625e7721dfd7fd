import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {transferFlags, transferOptions} from '../src/cli/remote-flags.js'
import {formatBytes} from '../src/progress.js'
import {PushResult, push} from '../src/services/remote.js'

export default class Push extends BaseCommand<typeof Push> {
  static override description = 'Send snapshots to an S3 remote; only the packs it lacks travel (default: every snapshot it lacks)'
  static override examples = ['<%= config.bin %> push --to backup', '<%= config.bin %> push latest:web --to s3://bucket/prefix']
  static override strict = false
  static override args = {snapshot: Args.string({description: 'id, unique id prefix, latest, or latest:NAME (several allowed)'})}
  static override flags = {
    to: Flags.string({description: 'remote name or s3://BUCKET[/PREFIX]', required: true}),
    ...transferFlags,
  }

  async run(): Promise<PushResult> {
    const {argv} = await this.parse(Push)
    const f = this.flags
    const r = await push({
      ...transferOptions(f, f.to),
      snapshots: argv as string[],
      progress: this.progress(),
      unlocked: (why) => this.warn(`the local repository's lock cannot be written (${why}): pushing without it, so a prune meanwhile could fail this push`),
    })
    if (!r.sameRepository) this.warn(`${r.remote} belongs to repository ${r.remoteRepository.slice(0, 12)}, not this one (${r.repository.slice(0, 12)}); data still dedups by content hash`)
    if (r.createdRemote) this.say(`created repository ${r.remoteRepository.slice(0, 12)} at ${r.remote}`)
    this.say(
      `pushed ${r.snapshotsSent.length} snapshot(s) to ${r.remote}: ${r.packsSent} packs (${formatBytes(r.bytesSent)}) sent, ` +
        `${r.packsSkipped} packs (${formatBytes(r.bytesSkipped)}) already there` +
        (r.snapshotsSkipped.length ? `; ${r.snapshotsSkipped.length} snapshot(s) were already on the remote` : ''),
    )
    return r
  }
}
