import {Flags} from '@oclif/core'

/** restore's and land's --[no-]keep-replaced (RestoreOptions.keepReplaced) */
export const keepReplacedFlag = Flags.boolean({
  description: "with --force, snapshot the container and volumes it replaces first (tag replaced-by-restore, never `latest`), and put them back if the restore fails",
  default: true,
  allowNo: true,
})
