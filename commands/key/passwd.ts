import {Flags} from '@oclif/core'
import {BaseCommand} from '../../src/cli/base.js'
import {endpointFlag, regionFlag} from '../../src/cli/remote-flags.js'
import {keyPasswd} from '../../src/services/key.js'

export default class KeyPasswd extends BaseCommand<typeof KeyPasswd> {
  static override description =
    'Change the passphrase given (--password-file / HOLYSHIP_PASSWORD / prompt) to a new one (--new-password-file / HOLYSHIP_NEW_PASSWORD / prompt); no data is re-encrypted'
  static override examples = ['<%= config.bin %> key passwd']
  static override flags = {
    'new-password-file': Flags.string({description: 'file holding the new passphrase (else HOLYSHIP_NEW_PASSWORD, else a prompt on a terminal)'}),
    to: Flags.string({description: 'a remote (name or s3://BUCKET[/PREFIX]) instead of the local repository'}),
    endpoint: endpointFlag,
    region: regionFlag,
  }

  async run(): Promise<{repository: string; added: string; removed: string}> {
    const f = this.flags
    const r = await keyPasswd({repo: f.repo, to: f.to, endpoint: f.endpoint, region: f.region, newPasswordFile: f['new-password-file']})
    this.say(`passphrase changed for ${r.repository}: key ${r.removed.slice(0, 12)} replaced by ${r.added.slice(0, 12)}`)
    return r
  }
}
