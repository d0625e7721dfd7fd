import {Flags} from '@oclif/core'
import {BaseCommand} from '../../src/cli/base.js'
import {endpointFlag, regionFlag} from '../../src/cli/remote-flags.js'
import {KeyListResult, keyList} from '../../src/services/key.js'

export default class KeyList extends BaseCommand<typeof KeyList> {
  static override description = 'List the keys (passphrases) of an encrypted repository; * marks the one the given passphrase opens'
  static override examples = ['<%= config.bin %> key list', '<%= config.bin %> key list --to backup']
  static override flags = {
    to: Flags.string({description: 'a remote (name or s3://BUCKET[/PREFIX]) instead of the local repository'}),
    endpoint: endpointFlag,
    region: regionFlag,
  }

  async run(): Promise<KeyListResult> {
    const f = this.flags
    const r = await keyList({repo: f.repo, to: f.to, endpoint: f.endpoint, region: f.region})
    for (const k of r.keys) this.say(`${k.current ? '*' : ' '} ${k.id.slice(0, 12)}  ${k.created}  ${k.user}@${k.host}  scrypt N=${k.kdf.N} r=${k.kdf.r} p=${k.kdf.p}`)
    for (const d of r.damaged) this.say(`! ${d.key}: ${d.problem}`)
    return r
  }
}
