#include <libxml/xmlversion.h>
/* libxml2's ICU hooks pull in the system ICU headers, which clash with Foundation's own ICU module;
   nothing here uses them (they only add fields to xmlCharEncodingHandler, which we never touch). */
#undef LIBXML_ICU_ENABLED
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlsave.h>
#include <libxml/xmlerror.h>
#include <libxml/globals.h>

static inline void vs_xml_free(void *p) { xmlFree(p); }
