import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../../src/cli/base.js'
import {endpointFlag, regionFlag} from '../../src/cli/remote-flags.js'
import {keyRemove} from '../../src/services/key.js'

export default class KeyRemove extends BaseCommand<typeof KeyRemove> {
  static override description = 'Remove a key (passphrase) of an encrypted repository; never the last one, nor the one the given passphrase opens'
  static override examples = ['<%= config.bin %> key remove 3f9c2a']
  static override args = {id: Args.string({description: 'key id or unique prefix (see `holyship key list`)', required: true})}
  static override flags = {
    to: Flags.string({description: 'a remote (name or s3://BUCKET[/PREFIX]) instead of the local repository'}),
    endpoint: endpointFlag,
    region: regionFlag,
  }

  async run(): Promise<{repository: string; removed: string}> {
    const f = this.flags
    const r = await keyRemove({repo: f.repo, to: f.to, endpoint: f.endpoint, region: f.region, id: this.args.id})
    this.say(`removed key ${r.removed.slice(0, 12)} from ${r.repository}`)
    return r
  }
}
