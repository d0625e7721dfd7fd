import {Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {endpointFlag, regionFlag} from '../src/cli/remote-flags.js'
import {UnlockServiceResult, unlock} from '../src/services/locking.js'

export default class Unlock extends BaseCommand<typeof Unlock> {
  static override description = 'List the repository locks; --remove-stale removes those of processes that are gone, --all removes every lock'
  static override examples = ['<%= config.bin %> unlock', '<%= config.bin %> unlock --remove-stale', '<%= config.bin %> unlock --all']
  static override flags = {
    'remove-stale': Flags.boolean({description: 'remove locks of processes gone from this host, and locks not refreshed for 30 min', exclusive: ['all']}),
    all: Flags.boolean({description: 'remove every lock (only when no other holyship uses the repository)', exclusive: ['remove-stale']}),
    to: Flags.string({description: 'a remote (name or s3://BUCKET[/PREFIX]) instead of the local repository'}),
    endpoint: endpointFlag,
    region: regionFlag,
  }

  async run(): Promise<UnlockServiceResult> {
    const f = this.flags
    const r = await unlock({repo: f.repo, to: f.to, endpoint: f.endpoint, region: f.region, removeStale: f['remove-stale'], all: f.all})
    for (const x of r.removed) this.say(`removed ${x.description}`)
    for (const x of r.kept) this.say(`${r.listed ? '' : 'kept '}${x.description}`)
    if (r.removed.length + r.kept.length === 0) this.say(`no locks in ${r.repository}`)
    else if (r.listed && r.kept.length > 0) this.say('remove stale locks with `holyship unlock --remove-stale` (or every lock with --all)')
    return r
  }
}
