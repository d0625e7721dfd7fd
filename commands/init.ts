import {Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {initRepository, InitResult} from '../src/services/init.js'

export default class Init extends BaseCommand<typeof Init> {
  static override description = 'Create a repository (default: $HOLYSHIP_REPO or $XDG_DATA_HOME/holyship/repo)'
  static override examples = [
    '<%= config.bin %> init',
    '<%= config.bin %> init --repo /srv/holyship',
    'HOLYSHIP_PASSWORD_FILE=~/.holyship-pass <%= config.bin %> init --encrypt',
  ]
  static override flags = {
    encrypt: Flags.boolean({
      description: 'encrypt and authenticate everything written (AES-256-GCM); the passphrase comes from --password-file, HOLYSHIP_PASSWORD or a prompt',
      default: false,
    }),
  }

  async run(): Promise<InitResult> {
    const r = await initRepository({repo: this.flags.repo, catalogue: this.flags.catalogue, encrypt: this.flags.encrypt})
    this.say(`created ${r.encrypted ? 'encrypted ' : ''}repository ${r.id.slice(0, 12)} at ${r.repository}`)
    if (r.encrypted) this.say('keep the passphrase safe: without it the data cannot be read, by anyone')
    return r
  }
}
