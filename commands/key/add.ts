import {Flags} from '@oclif/core'
import {BaseCommand} from '../../src/cli/base.js'
import {endpointFlag, regionFlag} from '../../src/cli/remote-flags.js'
import {keyAdd} from '../../src/services/key.js'

export default class KeyAdd extends BaseCommand<typeof KeyAdd> {
  static override description =
    'Add a passphrase to an encrypted repository (a new key file for the same master key; no data is re-encrypted). The new passphrase comes from --new-password-file, HOLYSHIP_NEW_PASSWORD or a prompt'
  static override examples = ['<%= config.bin %> key add', '<%= config.bin %> key add --new-password-file ~/.holyship-pass-host-b']
  static override flags = {
    'new-password-file': Flags.string({description: 'file holding the new passphrase (else HOLYSHIP_NEW_PASSWORD, else a prompt on a terminal)'}),
    to: Flags.string({description: 'a remote (name or s3://BUCKET[/PREFIX]) instead of the local repository'}),
    endpoint: endpointFlag,
    region: regionFlag,
  }

  async run(): Promise<{repository: string; id: string}> {
    const f = this.flags
    const r = await keyAdd({repo: f.repo, to: f.to, endpoint: f.endpoint, region: f.region, newPasswordFile: f['new-password-file']})
    this.say(`added key ${r.id.slice(0, 12)} to ${r.repository}`)
    return r
  }
}
