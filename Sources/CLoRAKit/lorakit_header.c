/* CLoRAKit is header-only: it gives LoRAKitCABI the types and constants of Include/lorakit.h. SwiftPM
 * needs a source file in a C target; compiling the header here also checks that it stands alone. */
#include "../../Include/lorakit.h"
